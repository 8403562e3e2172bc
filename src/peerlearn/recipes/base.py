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
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.early_stopping import EarlyStopping
from peerlearn.engine.optim import build_optimizer, build_schedule
from peerlearn.engine.run_record import RECORD_FORMAT, data_pipeline, registry_network
from peerlearn.engine.trainer import Callback, Stage, Trainer, check_finite
from peerlearn.errors import ConfigError
from peerlearn.models import create_model
from peerlearn.models.registry import accepts_option
from peerlearn.models.user import HookedModel, build_from_python
from peerlearn.engine.initial_weights import member_weights, saved_members  # noqa: F401 (saved_members: re-exported)
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
    """Base recipe: one stage, every trainable member trained with CE through the step contract
    (``engine.executors``). Subclasses give their ``losses`` (and, where they differ, ``step_members``,
    ``network_forward``, ``stages``, auxiliary modules and views).

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
    commands: tuple[str, ...] = ("evaluate", "analyze", "report", "export", "predict")

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

    # ------------------------------------------------------------------ the step contract (engine.executors)
    @property
    def executor(self):
        """How this recipe's steps run (``engine.executors``): chosen once, from the config and capabilities."""
        if getattr(self, "_executor", None) is None:
            self._executor = self.make_executor()
        return self._executor

    @executor.setter
    def executor(self, value) -> None:
        self._executor = value

    def make_executor(self):
        from peerlearn.engine.executors import select_executor

        return select_executor(self, self.config.engine.fused and self.supports_fused)

    def step(self, batch) -> dict[str, Any]:
        """One training step, run by the executor over ``step_members`` and ``losses``."""
        return self.executor.step(self, batch)

    def step_members(self) -> list[Member]:
        """The networks that run forward (with gradient) on this stage's batches: the trainable members."""
        return self.cohort.trainable

    def losses(self, out, batch, names: list[str]) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The loss of each named member given the step's outputs ``out`` (``engine.executors.StepOutputs``),
        with the parts to log: here the supervised term alone, L_k = CE(z_k, y) (+ the shared regularisers).

        A recipe gives its losses here, once: every executor (loop, sequential, fused, distributed) calls it.
        Frozen teachers (``self.infer``) and auxiliary modules are called inside it; a loss may be keyed by an
        auxiliary's name when it is that module's own objective."""
        result = {}
        for name in names:
            loss = self.supervised_loss(name, out.logits[name], batch.y, out.features.get(name))
            result[name] = (loss, dict(self.regularizer.last_parts.get(name, {})))
        return result

    def member_input(self, member: Member, batch) -> torch.Tensor:
        """The inputs ``member`` sees this step: the batch's (a recipe may feed each member its own augmented
        view of the same items, e.g. KDCL; ``batch.index`` names the items)."""
        return batch.x

    def after_update(self) -> None:
        """Called once per training step after every optimizer step: state the recipe updates itself (a
        temporal-mean / EMA copy of a member, a memory bank's momentum update)."""

    def shared_outputs(self) -> tuple[bool, bool]:
        """(logits, features): what members read of their peers in ``losses`` (none here)."""
        return False, False

    def network_forward(self, member: Member, x: torch.Tensor,
                        with_features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A member's training forward: its logits and, when asked, its penultimate features. Recipes whose
        networks train in part (greedy's active block over a frozen prefix) override this, not the executors."""
        if with_features:
            return member.model.forward_with_features(x)
        return member.model(x), None

    def forward(self, member: Member, x: torch.Tensor,
                with_features: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A member's logits (fp32) and, when the losses read them (``needs_features``), its penultimate
        features, under the recipe's autocast: the one training forward of every executor."""
        with_features = self.needs_features() if with_features is None else with_features
        network_forward = getattr(self, "_compiled_network_forward", None) or self.network_forward
        with self.autocast():
            logits, features = network_forward(member, x, with_features)
        return logits.float(), None if features is None else features.float()

    def compile(self, backend: str) -> None:
        """``engine.compile``: the training forward (``network_forward``, whatever parts of a network it calls:
        ``forward_with_features``, greedy's active block) compiled as a function, and ``nn.Module.compile`` on
        every participant with weights of its own for evaluation (the state-dict keys do not change)."""
        for member in self.cohort.saved:
            member.model.compile(backend=backend)
        self._compiled_network_forward = torch.compile(self.network_forward, backend=backend)

    def infer(self, member: Member, x: torch.Tensor) -> torch.Tensor:
        """A frozen participant's logits (fp32) under ``torch.inference_mode`` and the recipe's autocast; the
        result is a normal tensor, usable as a constant target next to autograd."""
        with torch.inference_mode(), self.autocast():
            logits = member.predictor(x).float()
        if torch.is_inference_mode_enabled():  # a caller's own inference block (e.g. a cache): keep as is
            return logits
        return logits.clone()  # out of inference mode: a normal tensor the loss may keep for backward

    def update(self, members: list[Member], losses: list[torch.Tensor], with_auxiliaries: bool = True,
               zero_auxiliaries: bool = True) -> torch.Tensor:
        """One optimizer step of each member (and of the trainable auxiliary modules) on its loss; returns the
        mean loss (detached).

        Every loss is checked to be finite first. The members' graphs are disjoint (peers and teachers enter
        as detached targets), so one backward of Σ_k L_k gives each member exactly the gradient of its own L_k;
        an auxiliary module (a gate, a connector) gets the gradient of every loss it enters. A sequential
        update steps the auxiliaries once, with its last member (``with_auxiliaries``), after zeroing their
        gradients only before its first (``zero_auxiliaries``).
        """
        for member, loss in zip(members, losses):
            check_finite(loss, member.name, self.trainer)
        auxiliaries = [m for m in self.cohort.auxiliaries if m.updating and m not in members]
        total = sum(losses)
        for member in members:
            member.zero_grad()
        if zero_auxiliaries:
            for auxiliary in auxiliaries:
                auxiliary.zero_grad()
        total.backward()
        for member in members:
            member.step()
        if with_auxiliaries:
            for auxiliary in auxiliaries:
                auxiliary.step()
            self.after_update()
        return total.detach() / len(members)

    # ------------------------------------------------------------------ auxiliary modules and views
    def add_auxiliary(self, name: str, module: torch.nn.Module, spec: dict[str, Any] | None = None,
                      predictor: torch.nn.Module | None = None, trainable: bool = True, epochs: int | None = None,
                      steps_per_epoch: int | None = None) -> Member:
        """Declare a trainable module that is not a member network (a gate, a connector, a projection head, an
        EMA copy: ``trainable=False``, updated by the recipe). It gets its optimizer and schedule from
        ``auxiliary.<name>`` (default: the members' ``optim`` / ``schedule``), is checkpointed (resumes
        bit-exactly), saved in model.safetensors and recorded in run.json; with a ``predictor`` (inputs →
        logits, e.g. a gated ensemble of branches) it is evaluated, reported and exported as its own row.
        ``spec`` (JSON) is what ``build_auxiliary`` / ``build_predictor`` rebuild it from when the run is read."""
        from peerlearn.engine.cohort import Member as Participant

        if name in self.cohort.members:
            raise ConfigError(f"Recipe {self.name!r} declares the auxiliary module {name!r}, but a member has that "
                              "name; rename the member.")
        module = module.to(self.device)
        member = Participant(name, module, trainable=trainable, kind="auxiliary", predictor=predictor,
                             info={"auxiliary": type(module).__name__, "spec": dict(spec or {})})
        if trainable:
            try:
                optim, schedule = self.config.auxiliary_optim(name), self.config.auxiliary_schedule(name)
            except ValueError as error:
                raise ConfigError(f"Invalid config: key 'auxiliary.{name}': {error}") from None
            member.optimizer = build_optimizer(module, optim)
            member.schedule = build_schedule(member.optimizer, schedule, epochs or self.config.train.epochs,
                                             steps_per_epoch or len(self.train_stream))
        else:
            module.requires_grad_(False)
        self.cohort.members[name] = member
        return member

    def add_view(self, name: str, module: torch.nn.Module, of: str, spec: dict[str, Any],
                 role: str = "branch") -> Member:
        """Declare a member that reads another participant's weights (trunk + branch k of a shared-trunk
        network): evaluated, ensembled and exported like a member, never saved or stepped on its own. ``spec``
        says how to rebuild it from its owner when the run is read back (``build_view``)."""
        from peerlearn.engine.cohort import Member as Participant

        member = Participant(name, module, trainable=False, kind="view", view_of=of,
                             info={"role": role, "view": {"of": of, **spec}})
        self.cohort.members[name] = member
        return member

    @classmethod
    def build_view(cls, owner: torch.nn.Module, spec: dict[str, Any]) -> torch.nn.Module:
        """Rebuild a view recorded as ``spec`` from its owner's module (``engine.run_record``): the shipped
        kind is ``{"branch": k}``, trunk + branch k of a shared-trunk network (``owner.branch(k)``). A recipe
        with views of its own overrides this."""
        from peerlearn.engine.cohort import unwrap

        owner = unwrap(owner)
        if "branch" in spec and callable(getattr(owner, "branch", None)):
            return owner.branch(int(spec["branch"]))
        raise PeerlearnError(f"Cannot rebuild the view {spec} of a {type(owner).__name__}: recipe {cls.name!r} "
                             "does not know it.")

    @classmethod
    def build_predictor(cls, name: str, spec: dict[str, Any], modules: dict[str, torch.nn.Module]) -> torch.nn.Module:
        """Rebuild the predictor (inputs → logits) of auxiliary module ``name`` when its run is read back,
        from the run's rebuilt modules (``modules``, by name) and the recorded ``spec``. Recipes whose
        auxiliaries predict override this."""
        raise PeerlearnError(f"Recipe {cls.name!r} cannot rebuild the predictions of its auxiliary module {name!r}.")

    def check_auxiliary_settings(self) -> None:
        """``auxiliary.<name>`` may only name the recipe's auxiliary modules."""
        known = [m.name for m in self.cohort.auxiliaries]
        unknown = [name for name in self.config.auxiliary if name not in known]
        if unknown:
            raise ConfigError(f"Invalid config: key 'auxiliary.{unknown[0]}': recipe {self.config.recipe!r} has no "
                              f"auxiliary module of that name; its modules: {', '.join(known) or 'none'}.")

    def build_trainer(self, run_dir: Path) -> Trainer:
        """The trainer of this recipe's cohort and stages, writing into ``run_dir`` (kept as ``self.trainer``:
        loss checks name the position and the last good checkpoint in their messages)."""
        self.check_auxiliary_settings()
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
        names, trainable = self.early_stopping_rows()
        if settings.of not in ("mean", "ensemble", *names):
            raise ConfigError(f"Invalid config: key 'regularize.early_stopping.of' has the value {settings.of!r}; "
                              f"allowed: mean, ensemble, {', '.join(names)}.")
        if settings.of == "ensemble" and len(trainable) < 2:
            raise ConfigError("Invalid config: key 'regularize.early_stopping.of' is 'ensemble', but the cohort has "
                              "fewer than two trainable members; use mean or a member name.")
        return EarlyStopping(settings)

    def early_stopping_rows(self) -> tuple[list[str], list[str]]:
        """(the rows ``regularize.early_stopping.of`` may name, the rows of the ensemble), from the config alone
        (early stopping is checked before the cohort is built): here the members, and the trainable ones."""
        return [m.name for m in self.config.members], [m.name for m in self.config.members if m.trainable]

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

    def participant_record(self, member: Member) -> dict[str, Any]:
        """One row of run.json's ``members``: a network (role, how to rebuild it), an auxiliary module (the spec
        its recipe rebuilds it from, whether it predicts) or a view (its owner and how to take it)."""
        if member.kind == "auxiliary":
            return {"name": member.name, "role": "auxiliary", "module": member.info.get("spec", {}),
                    "predicts": member.predictor is not None}
        if member.kind == "view":
            return {"name": member.name, "role": member.info.get("role", "branch"), "view": member.info["view"]}
        return {"name": member.name, "role": self.role(member.name), "network": self.network_record(member)}

    @classmethod
    def build_auxiliary(cls, name: str, spec: dict[str, Any]) -> torch.nn.Module:
        """Rebuild auxiliary module ``name`` (untrained) from the ``spec`` it was declared with, when its run is
        read back. Recipes with auxiliary modules override this."""
        raise PeerlearnError(f"Recipe {cls.name!r} cannot rebuild its auxiliary module {name!r}.")

    def describe_run(self) -> dict[str, Any]:
        """The recipe's part of run.json: members (role, network) and the data pipeline."""
        return {"format": RECORD_FORMAT, "recipe": self.config.recipe,  # a registered name or package.module:Class
                "recipe_class": f"{type(self).__module__}:{type(self).__qualname__}",
                "members": [self.participant_record(m) for m in self.cohort],
                "data": data_pipeline(self.config.data, self.config.seed, self.data)}

    def summary_extra(self) -> dict[str, Any]:
        """Recipe-specific numbers added to summary.json."""
        if self.early_stopping is None:
            return {}
        return {"early_stopping": self.early_stopping.summary()}


def load_member_weights(model: torch.nn.Module, source: str, name: str, index: int) -> None:
    """Initial weights of member ``name``: a run directory (its member of that name, or its only one),
    ``RUN_DIR:member``, a .safetensors file or a weights-only .pt file, peerlearn's or the plain state dict of
    the network itself (``peerlearn.engine.initial_weights``)."""
    key = f"members.{index}.weights"
    state, path = member_weights(source, name, model, key)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"Invalid config: key {key!r}: {str(path)!r} does not fit the model of "
                          f"member {name!r} ({detail}).") from None
    if missing:
        raise ConfigError(f"Invalid config: key {key!r}: {str(path)!r} does not fit model "
                          f"of member {name!r}; missing {len(missing)} tensors, e.g. {missing[:3]}"
                          f"{f' (the file has e.g. {unexpected[:3]})' if unexpected else ''}.")
