"""What every recipe shares: building members from the config, streams and the trainer."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from peerlearn.config import MemberConfig, RunConfig
from peerlearn.data.augment import BatchAugment
from peerlearn.data.batches import BatchStream, Normalizer
from peerlearn.data.bundle import DataBundle
from peerlearn.data.user import WithBatchTransform
from peerlearn.engine.checkpoint import load_weights
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.early_stopping import EarlyStopping
from peerlearn.engine.optim import build_optimizer, build_schedule
from peerlearn.engine.run_record import RECORD_FORMAT, data_pipeline, registry_network
from peerlearn.engine.trainer import Callback, Stage, Trainer, check_finite
from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.models import create_model
from peerlearn.models.registry import accepts_option
from peerlearn.models.user import HookedModel, build_from_python
from peerlearn.recipes.class_bias import get_class_bias
from peerlearn.regularize import Regularizer


def member_seed(seed: int, index: int) -> int:
    """Each member's initial weights depend only on (seed, its index), not on the other members."""
    return seed * 1_000 + index


def default_network(config: RunConfig) -> str:
    """The network of a default member: ``small_cnn`` for a source of images, ``mlp`` for one of feature vectors
    (``SourceSpec.gives``, e.g. tabular)."""
    from peerlearn.data.registry import SOURCES

    return "mlp" if SOURCES[config.data.source].gives == "features" else "small_cnn"


class Recipe:
    """Base recipe: one stage, all members trained by ``step``. Subclasses define ``step``.

    A recipe owns its rules. It declares, as class attributes, its settings (``section``, the config key, and
    ``section_model``, a ``peerlearn.config.Section`` subclass in the recipe's module, which
    ``register_recipe`` makes the config accept), what it can run on (``supports_fused``: a ``vmap``-ed
    cohort, ``supports_distributed``: one member per process; both through ``engine.executors``; rules that
    depend on its settings in ``check_capabilities``) and which after-training commands apply to its runs
    (``commands``, checked by ``run_reader``); ``validate`` checks the config and the data before anything
    is built; ``defaults`` gives the members (and whatever comes with them) of a config that names none.
    A recipe is one module: named by reference (``recipe: package.module:Class``) it needs no registration;
    ``peerlearn.recipes.register_recipe`` gives it a short name.

    The section's settings that a resumed run may change (``--resume --change``) are declared on its fields,
    with ``peerlearn.config.Changeable`` instead of ``Field``, like the built-in sections'.
    """

    name = "base"
    section: str | None = None
    section_model: type | None = None  # the settings' schema (a peerlearn.config.Section subclass)
    supports_fused = False
    supports_distributed = False
    commands: tuple[str, ...] = ("evaluate", "analyze", "report", "export")

    @classmethod
    def defaults(cls, config: RunConfig) -> dict[str, Any]:
        """Values for the keys a config leaves out, as dotted keys; the config applies each only where it is silent,
        before anything is built (``RunConfig``), and ``peerlearn config`` shows them.

        Here: two members of the data's default network (``default_network``), named m0 and m1. A recipe with
        another cohort overrides it, so that a config naming only ``recipe``, ``data`` and ``train`` trains."""
        model = default_network(config)
        return {"members": [{"model": model}, {"model": model}]}

    @classmethod
    def run_directory_keys(cls, config: RunConfig) -> list[str]:
        """Dotted keys of ``config``, besides the members' ``weights``, whose value may name a trained run's
        directory, so that a front end (the SQL model store) can resolve its own names there. None here."""
        return []

    @classmethod
    def validate(cls, config: RunConfig, data: DataBundle) -> None:
        """Raise ConfigError unless ``config`` (on ``data``) is a run this recipe can train.

        Subclasses extend it with their own rules (``super().validate(config, data)`` first)."""
        cls.check_capabilities(config)

    @classmethod
    def check_capabilities(cls, config: RunConfig, world_size: int = 1) -> None:
        """The execution modes asked for (``engine.fused``, ``world_size`` processes) against the declared ones."""
        from peerlearn.recipes import recipes_with

        if config.engine.fused and not cls.supports_fused:
            raise ConfigError(f"Invalid config: key 'engine.fused' is true, but recipe {config.recipe!r} has no "
                              f"fused step; allowed with recipes: {', '.join(recipes_with('supports_fused'))}.")
        if config.engine.fused:
            frozen = [m.name for m in config.members if not m.trainable]
            if frozen:
                raise ConfigError(f"Invalid config: key 'engine.fused' is true, but members {', '.join(frozen)} are "
                                  "frozen; a fused cohort trains every member.")
        if world_size > 1 and not cls.supports_distributed:
            raise ConfigError(f"Invalid config: recipe {config.recipe!r} cannot run distributed ({world_size} "
                              f"processes); allowed recipes: {', '.join(recipes_with('supports_distributed'))}.")

    def __init__(self, config: RunConfig, data: DataBundle, device: torch.device, distributed=None,
                 user_members=None):
        self.validate(config, data)
        self.config = config
        self.data = data
        self.device = device
        self.normalizer = Normalizer(data.mean, data.std, device, data.is_image)
        self.train_stream = BatchStream(data.train, config.data.batch_size, self.normalizer, device,
                                        seed=config.seed, augment=self.batch_augment(config.data.augment),
                                        shuffle=True, drop_last=True)
        self.eval_streams = {
            split: BatchStream(getattr(data, split), config.data.eval_batch_size, self.normalizer, device,
                               shuffle=False)
            for split in ("val", "test")
        }
        self.cohort: Cohort | None = None
        self.regularizer = Regularizer(config.regularize, data.num_classes)
        self.early_stopping: EarlyStopping | None = self._build_early_stopping()
        self.autocast_dtype: torch.dtype | None = None  # set by engine.acceleration (bf16 on CUDA)
        self.distributed = distributed  # a DistContext in a multi-process run (engine.distributed)
        # members given from Python (peerlearn.train(members=...)), by name
        self.user_members: dict[str, Any] = dict(user_members or {})
        self.trainer: Trainer | None = None  # made by build_trainer

    def batch_augment(self, settings) -> BatchAugment | WithBatchTransform:
        """The augmentation of training batches: ``settings`` (an ``AugmentConfig``), then the user's batch
        transform when data came from Python with one (``UserData.transform``)."""
        augment = BatchAugment(**settings.model_dump())
        if self.data.batch_transform is not None:
            return WithBatchTransform(augment, self.data.batch_transform)
        return augment

    def autocast(self):
        """Context for the forward passes: bf16 autocast when ``engine.precision: bf16`` on CUDA, else nothing.

        Recipes wrap their model calls in it and compute losses on ``logits.float()``.
        """
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ members
    def build_model(self, member_config: MemberConfig, index: int) -> torch.nn.Module:
        torch.manual_seed(member_seed(self.config.seed, index))
        if member_config.name in self.user_members:
            return self._finish_model(self.build_python_member(member_config, index), member_config, index)
        if not self.data.is_image and not accepts_option(member_config.model, "in_features"):
            raise ConfigError(f"Invalid config: key 'members.{index}.model' has the value {member_config.model!r}, "
                              f"a network for images, but the source {self.config.data.source!r} gives feature "
                              "vectors; use a model that takes in_features, e.g. mlp.")
        try:
            model = create_model(member_config.model, **self.data.model_kwargs(), **member_config.model_args,
                                 **({"features_from": member_config.features_from} if member_config.features_from
                                    else {}))
        except (ValueError, TypeError, RuntimeError) as error:
            raise ConfigError(f"Invalid config: key 'members.{index}.model_args' for model "
                              f"{member_config.model!r}: {error}.") from None
        except ConfigError as error:
            raise ConfigError(f"Invalid config: key 'members.{index}.model': {error}") from None
        return self._finish_model(model, member_config, index)

    def build_python_member(self, member_config: MemberConfig, index: int) -> torch.nn.Module:
        """A member given from Python (a module or a factory); its rebuildable name is written into the config."""
        try:
            model, name, args = build_from_python(self.user_members[member_config.name], member_config.name,
                                                  member_config.model_args, self.data.model_kwargs(),
                                                  member_config.features_from)
        except ConfigError as error:
            raise ConfigError(f"Member {member_config.name!r} (members.{index}): {error}") from None
        member_config.model, member_config.model_args = name, args
        return model

    def _finish_model(self, model: torch.nn.Module, member_config: MemberConfig, index: int) -> torch.nn.Module:
        """Initial weights, device, and a check that the network fits the data."""
        if member_config.weights:
            load_member_weights(model, member_config.weights, member_config.name, index)
        model = model.to(self.device)
        self.check_fits_data(model, member_config, index)
        return model

    def check_fits_data(self, model: torch.nn.Module, member_config: MemberConfig, index: int) -> None:
        """One forward pass on two training inputs (eval mode, no gradient: nothing changes, no random
        draw) so a model that does not fit the dataset fails now, naming the member, not mid-training."""
        sample = self.normalizer(self.data.train.x[:2].to(self.device))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(sample)
                if isinstance(model, HookedModel) and self.needs_features():
                    model.forward_with_features(sample)  # a features_from that forward never reaches fails now
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"Invalid config: key 'members.{index}.model' ({member_config.model!r} with model_args "
                f"{member_config.model_args}) does not fit the dataset {self.config.data.source!r} "
                f"(inputs {tuple(sample.shape[1:])}, {self.data.num_classes} classes): {detail}.") from None
        except ConfigError as error:
            raise ConfigError(f"Member {member_config.name!r} (members.{index}): {error}") from None
        finally:
            model.train(was_training)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != self.data.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else f"a {type(logits).__name__}"
            fix = ("build the network with that many outputs (peerlearn passes num_classes to a factory that takes it)"
                   if isinstance(model, HookedModel) else "remove num_classes from model_args")
            raise ConfigError(
                f"Invalid config: key 'members.{index}.model' ({member_config.model!r}) gives outputs of shape "
                f"{shape}, but the dataset {self.config.data.source!r} has {self.data.num_classes} "
                f"classes (a member must return logits [batch, classes]); {fix}.")

    def needs_features(self) -> bool:
        """Whether the recipe reads the members' penultimate features (feature losses, centre loss)."""
        needs = getattr(self, "_needs_features", None)
        return bool(needs() if needs is not None else self.regularizer.needs_features)

    def build_member(self, member_config: MemberConfig, index: int, epochs: int | None = None,
                     steps_per_epoch: int | None = None) -> Member:
        model = self.build_model(member_config, index)
        member = Member(member_config.name, model, trainable=member_config.trainable,
                        info={"model": member_config.model, "model_args": member_config.model_args},
                        max_norm=member_config.max_norm)
        if member_config.trainable:
            member.optimizer = build_optimizer(model, self.config.member_optim(member_config))
            member.schedule = build_schedule(member.optimizer, self.config.member_schedule(member_config),
                                             epochs or self.config.train.epochs,
                                             steps_per_epoch or len(self.train_stream))
        else:
            model.requires_grad_(False)
        return member

    def build_cohort(self) -> Cohort:
        self.cohort = Cohort([self.build_member(m, i) for i, m in enumerate(self.config.members)])
        return self.cohort

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        return [Stage("train", self.config.train.epochs, self.step)]

    def step(self, batch) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def supervised_loss(self, member: str, logits: torch.Tensor, labels: torch.Tensor,
                        features: torch.Tensor | None = None) -> torch.Tensor:
        """The supervised term every recipe uses for member ``member``: CE(logits, labels), labels −1 ignored.

        The one place where the regularisers shared by all recipes hook in (``regularize:``: label
        smoothing, L1 / L2 on the member's weights, centre loss on ``features``), so that every recipe gets
        them by calling this instead of ``cross_entropy`` directly. Recipes pass the penultimate
        ``features`` whenever ``self.regularizer.needs_features`` is true.
        """
        model = self.cohort[member].model if self.cohort is not None and member in self.cohort.members else None
        return self.regularizer.loss(member, model, logits, labels, features)

    def forward(self, member: Member, x: torch.Tensor,
                with_features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A member's logits (fp32) and, when asked, its penultimate features, under the recipe's autocast."""
        with self.autocast():
            if with_features:
                logits, features = member.model.forward_with_features(x)
                return logits.float(), features.float()
            return member.model(x).float(), None

    def update(self, members: list[Member], losses: list[torch.Tensor]) -> torch.Tensor:
        """One optimizer step of each member on its own loss; returns the mean loss (detached).

        Every loss is checked to be finite first. The members' graphs are disjoint (peers and teachers enter
        as detached targets), so one backward of Σ_k L_k gives each member exactly the gradient of its own L_k.
        """
        for member, loss in zip(members, losses):
            check_finite(loss, member.name, self.trainer)
        total = sum(losses)
        for member in members:
            member.zero_grad()
        total.backward()
        for member in members:
            member.step()
        return total.detach() / len(members)

    def build_trainer(self, run_dir: Path) -> Trainer:
        """The trainer of this recipe's cohort and stages, writing into ``run_dir`` (kept as ``self.trainer``:
        loss checks name the position and the last good checkpoint in their messages)."""
        self.trainer = Trainer(self.config, self.cohort, self.stages(), self.train_stream, self.eval_streams, run_dir,
                               callbacks=self.callbacks(), extra_state=self.extra_state,
                               load_extra_state=self.load_extra_state, describe_run=self.describe_run,
                               distributed=self.distributed)
        return self.trainer

    def callbacks(self) -> list[Callback]:
        """Callbacks of the trainer; recipes that add their own extend ``super().callbacks()``."""
        return [self.early_stopping] if self.early_stopping is not None else []

    def _build_early_stopping(self) -> EarlyStopping | None:
        """``regularize.early_stopping``, checked against the data and the cohort before anything runs."""
        settings = self.config.regularize.early_stopping
        if not settings.enabled:
            return None
        if len(self.data.val) == 0:
            raise ConfigError("Invalid config: key 'regularize.early_stopping.enabled' is true, but there is no "
                              "validation split; set data.val_fraction > 0 (or data.val_size).")
        names = [m.name for m in self.config.members]
        trainable = [m.name for m in self.config.members if m.trainable]
        if settings.of not in ("mean", "ensemble", *names):
            raise ConfigError(f"Invalid config: key 'regularize.early_stopping.of' has the value {settings.of!r}; "
                              f"allowed: mean, ensemble, {', '.join(names)}.")
        if settings.of == "ensemble" and len(trainable) < 2:
            raise ConfigError("Invalid config: key 'regularize.early_stopping.of' is 'ensemble', but the cohort has "
                              "fewer than two trainable members; use mean or a member name.")
        return EarlyStopping(settings)

    def extra_state(self) -> dict[str, Any]:
        """Recipe state saved in checkpoints besides the models (here: the centre-loss centres)."""
        return {"regularize": self.regularizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.regularizer.load_state_dict(state.get("regularize", {}))

    # ------------------------------------------------------------------ the run's own description
    def role(self, name: str) -> str:
        """``student`` for a member the recipe trains, ``frozen`` for one that never trains."""
        member = next(m for m in self.config.members if m.name == name)
        return "student" if member.trainable else "frozen"

    def network_record(self, member: Member) -> dict[str, Any]:
        """How to rebuild ``member``'s network (engine.run_record): its registry name and arguments, and the
        class bias a distillation student predicts with."""
        bias = get_class_bias(member.model)
        return registry_network(member.info["model"], member.info.get("model_args", {}), self.data.model_kwargs(),
                                class_bias=None if bias is None else bias.cpu().tolist())

    def describe_run(self) -> dict[str, Any]:
        """The recipe's part of run.json: members (role, network) and the data pipeline."""
        return {"format": RECORD_FORMAT, "recipe": self.config.recipe,  # a registered name or package.module:Class
                "recipe_class": f"{type(self).__module__}:{type(self).__qualname__}",
                "members": [{"name": m.name, "role": self.role(m.name), "network": self.network_record(m)}
                            for m in self.cohort],
                "data": data_pipeline(self.config.data, self.config.seed, self.data)}

    def summary_extra(self) -> dict[str, Any]:
        """Recipe-specific numbers added to summary.json."""
        if self.early_stopping is None:
            return {}
        return {"early_stopping": self.early_stopping.summary()}


def saved_members(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> list[str]:
    """Members of a peerlearn weights file (keys ``<member>.<parameter>``) whose tensors fit ``model_keys``;
    empty for a plain state dict."""
    if set(tensors) & model_keys:
        return []
    prefixes = dict.fromkeys(k.split(".", 1)[0] for k in tensors if "." in k)
    return [p for p in prefixes if {k[len(p) + 1:] for k in tensors if k.startswith(p + ".")} & model_keys]


def load_member_weights(model: torch.nn.Module, source: str, name: str, index: int) -> None:
    """Initial weights from a .safetensors file, or from a peerlearn run directory (member ``name``)."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"Invalid config: key 'members.{index}.weights' has the value {source!r}, which is neither "
                          "a .safetensors (or .pt) file nor a peerlearn run directory holding model.safetensors.")
    try:
        tensors = load_weights(path)
    except ConfigError:
        raise
    except PeerlearnError as error:
        raise ConfigError(f"Invalid config: key 'members.{index}.weights': {error}") from None
    prefix = f"{name}."
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    saved = saved_members(tensors, set(model.state_dict()))
    if not own and saved:
        raise ConfigError(f"Invalid config: key 'members.{index}.weights': {str(path)!r} holds the weights of "
                          f"member(s) {', '.join(saved)}, none named {name!r}; name members.{index} after the saved "
                          f"member (name: {saved[0]}).")
    state = own or tensors
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"Invalid config: key 'members.{index}.weights': {str(path)!r} does not fit the model of "
                          f"member {name!r} ({detail}).") from None
    if missing:
        raise ConfigError(f"Invalid config: key 'members.{index}.weights': {str(path)!r} does not fit model "
                          f"of member {name!r}; missing {len(missing)} tensors, e.g. {missing[:3]}.")
