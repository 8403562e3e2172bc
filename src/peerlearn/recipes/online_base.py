"""What the online-distillation recipes (ONE, CL-ILR, OKDDip, KDCL, PCL) share.

* ``default_network``: the network of their default members: ``resnet32`` for CIFAR-like images (3 channels,
  32×32), ``small_cnn`` for other images, ``mlp`` (two hidden layers of 800) for feature vectors.
* ``augmented_view``: member (or branch) k's own random augmentation of the batch's items, drawn from a
  generator seeded by (seed, global step, k): the same draw in a resumed run. View 0 is the batch itself.
* ``BranchRecipe``: the recipes whose cohort is one multi-branch network (``models.multibranch``): a member
  ``model: small_cnn`` (or resnet20/32/56, cifar_resnet, mlp) plus the recipe's number of branches builds
  ``create_multibranch(model, num_branches=K, ...)``; the network steps as one member, its branches (trunk +
  branch k) are views that are evaluated, ensembled and exported. run.json records the network as
  ``{"kind": "multibranch", "model", "model_args", "shape_args", "branches", "trunk_grad_scale"}``, which
  ``run_reader.build_network`` rebuilds.

The recipes apply their method's loss as a whole, not the shared ``regularize`` terms (label smoothing, L1/L2,
centre loss): those are refused; early stopping applies (``of`` may name any evaluated row).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from peerlearn.config import MemberConfig, RunConfig
from peerlearn.data.bundle import DataBundle
from peerlearn.data.lazy import LazyItems
from peerlearn.data.streaming import mix_seed
from peerlearn.engine.cohort import Member
from peerlearn.engine.run_record import registry_network
from peerlearn.engine.trainer import Stage
from peerlearn.errors import ConfigError
from peerlearn.memory_format import stack_like
from peerlearn.models.multibranch import BranchOutputs, MultiBranchNet, available_multibranch, create_multibranch
from peerlearn.recipes.base import Recipe, load_member_weights, member_seed

log = logging.getLogger(__name__)

VIEW_SEED = 11  # keeps the views' draws apart from the stream's own augmentation draws


def default_network(config: RunConfig | None, data: DataBundle | None) -> dict[str, Any]:
    """The default member network of the online recipes for ``data`` (or, without data, for ``config``'s source):
    ``resnet32`` for 3×32×32 images (CIFAR-like, the papers' ResNet-32), ``small_cnn`` for other images, ``mlp``
    with two hidden layers (800-800; the multi-branch form needs two) for feature vectors."""
    if data is None:
        from peerlearn.data.registry import SOURCES

        source = config.data.source if config is not None else "digits"
        spec = SOURCES.get(source)
        if getattr(spec, "gives", "images") == "features" or source == "tabular":
            return {"model": "mlp", "model_args": {"widths": [800, 800]}}
        return {"model": "resnet32"} if source in ("cifar10", "cifar100") else {"model": "small_cnn"}
    if not data.is_image:
        return {"model": "mlp", "model_args": {"widths": [800, 800]}}
    if tuple(data.input_shape) == (3, 32, 32):
        return {"model": "resnet32"}
    return {"model": "small_cnn"}


def check_regularizers(config: RunConfig, recipe: str) -> None:
    """The online recipes' losses are their papers' as a whole: the shared regularisers are refused."""
    settings = config.regularize
    for key in ("label_smoothing", "l1", "l2", "center_loss"):
        if getattr(settings, key):
            raise ConfigError(f"Invalid config: key 'regularize.{key}' is {getattr(settings, key)}, but recipe "
                              f"{recipe!r} trains with its paper's loss only; allowed: 0 (early stopping applies).")


def check_views_possible(data: DataBundle, recipe: str) -> None:
    """Per-member views are drawn from the training items in memory."""
    if isinstance(data.train.x, LazyItems):
        raise ConfigError(f"Recipe {recipe!r} gives each member its own augmented view of the batch, which needs the "
                          "training split in memory; this source streams its items from disk.")


def augmented_view(recipe: Recipe, batch, k: int) -> torch.Tensor:
    """View ``k`` of the batch's items: view 0 is ``batch.x``; view k ≥ 1 is the training items ``batch.index``
    augmented by ``data.augment`` (and the user's batch transform) with a generator seeded by (seed, global step,
    k), then normalised. Deterministic per step, so a resumed run draws the same views."""
    if k == 0:
        return batch.x
    stream = recipe.train_stream
    augment = stream.augment
    raw = stream.x[batch.index.to(stream.x.device)].to(batch.x.device)
    if augment is not None and getattr(augment, "active", False):
        step = recipe.trainer.position.global_step if recipe.trainer is not None else 0
        generator = torch.Generator().manual_seed(mix_seed(recipe.config.seed, step, k, VIEW_SEED))
        raw = augment(raw, generator)
    return stream.normalizer(raw)


def warn_without_augmentation(recipe: Recipe) -> None:
    augment = recipe.train_stream.augment
    if augment is None or not getattr(augment, "active", False):
        log.warning("Recipe %r gives each member its own augmented view, but data.augment draws nothing: the views "
                    "coincide (set e.g. data.augment.crop_padding or data.augment.flip).", recipe.name)


class BranchRecipe(Recipe):
    """A recipe whose cohort is one multi-branch network: one member, ``branch_count`` branches on its trunk.

    Subclasses set ``section`` / ``section_model`` (with a ``branches`` key or their own count), declare their
    views and auxiliary modules in ``declare_parts`` and give ``losses`` over the network's stacked outputs:
    ``out.logits[net]`` [K, B, C], ``out.features[net]`` [K, B, D] and ``self.trunk_output`` (the trunk's output
    of this step's forward, in the graph).
    """

    own_views = False  # True: each branch reads its own augmented view of the batch (PCL)

    # ------------------------------------------------------------------ what the config names
    @classmethod
    def branch_count(cls, settings) -> int:
        """Branches of the network (OKDDip: its peers and the leader)."""
        return settings.branches

    @classmethod
    def trunk_grad_scale(cls, settings) -> float:
        """Factor of the gradient the branches send into the trunk (CL-ILR: 1/H)."""
        return 1.0

    @classmethod
    def settings_of(cls, config: RunConfig):
        return getattr(config, cls.section)

    @classmethod
    def defaults(cls, config: RunConfig) -> dict[str, Any]:
        """One multi-branch network named ``net`` of ``default_network`` (for the config's data source)."""
        return {"members": [{"name": "net", **default_network(config, None)}]}

    @classmethod
    def validate(cls, config: RunConfig, data: DataBundle) -> None:
        """One trainable member whose zoo model has a multi-branch form; no shared regularisers."""
        super().validate(config, data)
        if len(config.members) != 1 or not config.members[0].trainable:
            raise ConfigError(f"Invalid config: key 'members': recipe {config.recipe!r} trains one multi-branch "
                              f"network, so it takes one trainable member (e.g. members: [{{name: net, model: "
                              f"small_cnn}}]), got {len(config.members)}.")
        model = config.members[0].model
        if model not in available_multibranch():
            raise ConfigError(f"Invalid config: key 'members.0.model' has the value {model!r}, which has no "
                              f"multi-branch form; allowed: {', '.join(available_multibranch())}.")
        check_regularizers(config, config.recipe)
        if cls.own_views:
            check_views_possible(data, config.recipe)

    # ------------------------------------------------------------------ the network
    @property
    def settings(self):
        return self.settings_of(self.config)

    def build_model(self, member_config: MemberConfig, index: int) -> torch.nn.Module:
        """``create_multibranch(model, num_branches=K, trunk_grad_scale=s, **shapes, **model_args)``, seeded by the
        member's seed; initial ``weights`` load into the whole network; one branch is checked against the data."""
        if member_config.name in self.user_members:
            raise ConfigError(f"Member {member_config.name!r}: recipe {self.name!r} builds a multi-branch network from "
                              f"a zoo model ({', '.join(available_multibranch())}); a module given from Python "
                              "cannot be split into branches.")
        torch.manual_seed(member_seed(self.config.seed, index))
        try:
            net = create_multibranch(member_config.model, num_branches=self.branch_count(self.settings),
                                     trunk_grad_scale=self.trunk_grad_scale(self.settings),
                                     **self.data.model_kwargs(), **member_config.model_args)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"Invalid config: key 'members.{index}.model_args' for the multi-branch "
                              f"{member_config.model!r}: {error}.") from None
        if member_config.weights:
            load_member_weights(net, member_config.weights, member_config.name, index)
        net = net.to(self.device)
        self.check_fits_data(net.branch(0), member_config, index)
        return net

    def network_record(self, member: Member) -> dict[str, Any]:
        """The multi-branch network's record (``run_reader.build_network`` kind ``multibranch``)."""
        return multibranch_record(member.network, member.info["model"], member.info.get("model_args", {}),
                                  self.data.model_kwargs())

    def role(self, name: str) -> str:
        """The network whose branches are the members: ``multibranch`` (its own forward gives every branch)."""
        return "multibranch"

    @property
    def owner(self) -> Member:
        return self.cohort.trainable[0]

    def build_cohort(self):
        cohort = super().build_cohort()
        self.owner.predictor = None  # the branches predict, each one a view
        if self.own_views:
            warn_without_augmentation(self)
        self.declare_parts(self.owner)
        return cohort

    def declare_parts(self, owner: Member) -> None:  # pragma: no cover - abstract
        """Declare the views (branches) and auxiliary modules of the recipe."""
        raise NotImplementedError

    def add_branches(self, owner_name: str, module: MultiBranchNet, names: list[str], first: int = 0) -> None:
        """Views ``names`` = trunk + branch ``first + i`` of ``module`` (owned by ``owner_name``); a view in the
        ensemble has the role ``student``, any other ``branch``."""
        ensemble = set(self.ensemble_rows(self.config))
        for i, name in enumerate(names):
            self.add_view(name, module.branch(first + i), of=owner_name, spec={"branch": first + i},
                          role="student" if name in ensemble else "branch")

    # ------------------------------------------------------------------ rows of the summary
    @classmethod
    def evaluated_rows(cls, config: RunConfig) -> list[str]:  # pragma: no cover - abstract
        """The rows evaluated each epoch (views and predicting auxiliary modules), from the config alone."""
        raise NotImplementedError

    @classmethod
    def ensemble_rows(cls, config: RunConfig) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def deployed_row(cls, config: RunConfig) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def early_stopping_rows(self) -> tuple[list[str], list[str]]:
        return self.evaluated_rows(self.config), self.ensemble_rows(self.config)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.config.train.epochs, self.step, ensemble_members=self.ensemble_rows(self.config))]

    def summary_extra(self) -> dict[str, Any]:
        return {**super().summary_extra(), "deployed": self.deployed_row(self.config)}

    # ------------------------------------------------------------------ the step
    def member_input(self, member: Member, batch) -> torch.Tensor:
        """The batch, or (``own_views``) K views stacked [K, B, ...], view k for branch k."""
        if not self.own_views:
            return batch.x
        views = [augmented_view(self, batch, k) for k in range(self.branch_count(self.settings))]
        return stack_like(views, batch.x)  # each view reaches the trunk in the batch's memory layout

    def network_forward(self, member: Member, x: torch.Tensor, with_features: bool):
        """Every branch at once: logits [K, B, C] and pooled features [K, B, D]; the trunk's output is kept in
        ``self.trunk_output`` for the losses (ONE's gate reads it)."""
        out: BranchOutputs = member.model(list(x.unbind(0)) if self.own_views else x)
        self.trunk_output = out.trunk
        return out.logits, out.features

    def rampup(self, length: float) -> float:
        """sigmoid_rampup(epoch, length) at the current epoch (1 when ``length`` is 0)."""
        from peerlearn.losses.temporal import sigmoid_rampup

        epoch = self.trainer.position.global_epoch if self.trainer is not None else 0
        return sigmoid_rampup(epoch, length)


def multibranch_record(net: MultiBranchNet, model: str, model_args: dict, shape_args: dict) -> dict[str, Any]:
    """run.json's description of a multi-branch network, rebuilt by ``create_multibranch``."""
    base = registry_network(model, model_args, shape_args)
    return {"kind": "multibranch", "model": model, "model_args": dict(model_args), "shape_args": dict(shape_args),
            "factory": base["factory"], "branches": net.num_branches, "trunk_grad_scale": net.trunk_grad_scale}
