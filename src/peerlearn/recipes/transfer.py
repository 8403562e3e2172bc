"""Transfer learning: a pretrained backbone, a new head for the target classes, and a choice of
how much of the backbone trains.

* ``features``: the backbone is fixed; its bottleneck features of every split are computed once,
  cached on disk, and only the new linear head trains on them (seconds on MNIST-sized data).
* ``finetune``: every layer trains from the start.
* ``staged``: the head trains alone, then backbone group 1 (deepest), 2, … join at the epochs
  ``unfreeze_at``. Each stage starts a new optimizer over the trainable groups.

Learning rate of group k (head k = 0): lr · m_k with ``lr_multipliers`` m, or lr · decay^k with
``layer_decay``. BatchNorm layers of frozen groups (and all of them with ``freeze_bn``) stay in eval
mode: their running statistics and affine parameters do not change.

Optional, with labelled ``source_data`` added to the training set: importance weights of source
items from a domain classifier (instance transfer) and a CORAL / MMD loss between the source and
target features of each batch (feature transfer):

    L = CE(z, y) + λ_align · D(features of source items, features of target items)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field, field_validator, model_validator

from peerlearn.config import RunConfig, Section, known_source
from peerlearn.data.batches import BatchStream
from peerlearn.data.bundle import DataBundle, Split
from peerlearn.data.prepare import load_data
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.optim import build_optimizer, build_schedule
from peerlearn.engine.trainer import Stage
from peerlearn.errors import ConfigError
from peerlearn.recipes.base import Recipe, default_network, member_seed
from peerlearn.transfer.alignment import ALIGNMENT_LOSSES
from peerlearn.transfer.backbone import BackboneConfig, load_backbone
from peerlearn.transfer.cache import cached_features, compute_features
from peerlearn.transfer.importance import effective_sample_size, importance_weights
from peerlearn.transfer.model import TransferModel, batchnorm_layers
from peerlearn.transfer.streams import (WeightedBatchStream, concat_splits, domain_of, feature_split,
                                        identity_normalizer)


class DomainDataConfig(Section):
    """Labelled source-domain data trained on together with the (few-label) target data."""

    source: str = Field("mnist", description="dataset source of the source domain")
    root: Optional[str] = Field(None, description="its data directory (default: data.root)")
    path: Optional[str] = Field(None, description="folder or file, for sources that need one")
    train_subset: Optional[int] = Field(None, gt=0, description="use only this many source images")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific options")

    _known_source = field_validator("source")(known_source)


class TransferConfig(Section):
    """Transfer learning: pretrained backbone(s), a new head, and how much of the backbone trains."""

    backbones: list[BackboneConfig] = Field(default_factory=list, description="one backbone, or several whose "
                                                                               "features are concatenated")
    mode: Literal["features", "finetune", "staged"] = Field(
        "features", description="features: cached bottleneck features, head only; finetune: all layers; "
                                "staged: head first, deeper groups unfrozen at unfreeze_at")
    groups: int = Field(3, gt=0, description="number of backbone parameter groups (deepest = group 1)")
    unfreeze_at: list[int] = Field(default_factory=list, description="staged: epochs at which group 1, 2, ... "
                                                                     "start training")
    lr_multipliers: Optional[list[float]] = Field(None, description="lr factor per group, head first "
                                                                    "(groups + 1 values)")
    layer_decay: Optional[float] = Field(None, gt=0, le=1, description="lr of group k = lr · layer_decay^k "
                                                                       "(head k = 0)")
    freeze_bn: bool = Field(False, description="keep every backbone BatchNorm in eval mode with fixed affine "
                                               "parameters, even when its group trains")
    cache_dir: Optional[str] = Field(None, description="features mode: cache folder (default: "
                                                       "$PEERLEARN_CACHE/features, then ~/.cache/peerlearn/features)")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the new classifier")
    source_data: Optional[DomainDataConfig] = Field(None, description="labelled source-domain data added to "
                                                                      "the training set (instance/feature transfer)")
    importance: Literal["none", "inputs", "features"] = Field(
        "none", description="weight source items by p(target|x)/p(source|x) from a logistic domain "
                            "classifier on the inputs or on the backbone features")
    importance_clip: tuple[float, float] = Field((0.1, 10.0), description="clip of the normalised weights")
    align: Literal["none", "coral", "mmd"] = Field("none", description="feature alignment loss between "
                                                                        "source and target items of a batch")
    align_weight: float = Field(1.0, ge=0, description="weight of the alignment loss")

    @model_validator(mode="after")
    def _consistent(self) -> "TransferConfig":
        if self.mode == "staged" and not self.unfreeze_at:
            raise ValueError("mode=staged needs unfreeze_at (epochs at which groups 1, 2, ... unfreeze)")
        if len(self.unfreeze_at) > self.groups:
            raise ValueError(f"unfreeze_at has {len(self.unfreeze_at)} epochs but there are only "
                             f"{self.groups} groups")
        if list(self.unfreeze_at) != sorted(self.unfreeze_at) or any(e <= 0 for e in self.unfreeze_at):
            raise ValueError("unfreeze_at must be increasing positive epochs")
        if self.lr_multipliers is not None and len(self.lr_multipliers) != self.groups + 1:
            raise ValueError(f"lr_multipliers needs groups + 1 = {self.groups + 1} values (head first)")
        if self.lr_multipliers is not None and self.layer_decay is not None:
            raise ValueError("give lr_multipliers or layer_decay, not both")
        if (self.importance != "none" or self.align != "none") and self.source_data is None:
            raise ValueError("importance weighting and alignment need source_data")
        if self.align != "none" and self.mode == "features":
            raise ValueError("align needs a trainable backbone: mode finetune or staged")
        lo, hi = self.importance_clip
        if not 0 < lo <= 1 <= hi:
            raise ValueError("importance_clip must be (low, high) with 0 < low <= 1 <= high")
        return self


class TransferRecipe(Recipe):
    name = "transfer"
    section = "transfer"
    section_model = TransferConfig

    @classmethod
    def defaults(cls, config: RunConfig) -> dict[str, Any]:
        """One member, the new network; ``transfer.backbones`` has no default: the pretrained networks are the
        user's to name (``validate`` says so)."""
        return {"members": [{"model": default_network(config)}]}

    @classmethod
    def run_directory_keys(cls, config: RunConfig) -> list[str]:
        """Each backbone's ``source`` may be a run directory."""
        return [f"transfer.backbones.{index}.source" for index in range(len(config.transfer.backbones))]

    @classmethod
    def validate(cls, config: RunConfig, data: DataBundle) -> None:
        """Backbones given, one member, unfreeze epochs inside the run, no augmentation of cached features."""
        super().validate(config, data)
        settings = config.transfer
        if not settings.backbones:
            raise ConfigError("Invalid config: recipe 'transfer' needs key 'transfer.backbones' (at least one "
                              "backbone: a run directory, a weights file or timm:<name>).")
        if len(config.members) != 1:
            raise ConfigError(f"Invalid config: recipe 'transfer' trains one member; key 'members' has "
                              f"{len(config.members)}.")
        if settings.unfreeze_at and settings.unfreeze_at[-1] >= config.train.epochs:
            raise ConfigError(f"Invalid config: key 'transfer.unfreeze_at' has the value {settings.unfreeze_at}: "
                              f"every epoch must be below train.epochs = {config.train.epochs}.")
        if settings.mode == "features" and any(v for v in config.data.augment.model_dump().values()):
            raise ConfigError("Invalid config: key 'data.augment' is set, but transfer.mode=features trains on "
                              "cached features of the unaugmented images; use mode finetune or staged.")

    def __init__(self, config: RunConfig, data: DataBundle, device: torch.device, distributed=None,
                 user_members=None):
        super().__init__(config, data, device, distributed, user_members)
        self.settings = settings = config.transfer
        self.n_target: Optional[int] = None
        self.source_weights: Optional[torch.Tensor] = None
        self.cache_info: dict[str, Any] = {}
        self.train_split = data.train
        if settings.align == "none" and not bool((data.train.y >= 0).all()):
            # unlabelled target items carry no signal without an alignment term: train on the labelled ones
            keep = data.train.y >= 0
            self.train_split = Split(data.train.x[keep], data.train.y[keep])
        if settings.source_data is not None:
            self.train_split = self._with_source_data(data)

    # ------------------------------------------------------------------ data
    def _with_source_data(self, data: DataBundle) -> Split:
        spec = self.settings.source_data
        source_config = self.config.data.model_copy(update={
            "source": spec.source, "root": spec.root or self.config.data.root, "path": spec.path,
            "train_subset": spec.train_subset, "labelled": None, "val_fraction": 0.0, "options": spec.options,
            **({"val_size": None} if "val_size" in type(self.config.data).model_fields else {})})
        source = load_data(source_config, seed=self.config.seed + 17)
        if source.num_classes != data.num_classes:
            raise ConfigError(f"Invalid config: key 'transfer.source_data.source' ({spec.source!r}) has "
                              f"{source.num_classes} classes but the target data has {data.num_classes}.")
        if source.input_shape != data.input_shape:
            raise ConfigError(f"Invalid config: key 'transfer.source_data.source' gives inputs of shape "
                              f"{source.input_shape} but the target data {data.input_shape}; set data.image_size.")
        self.n_target = len(self.train_split)
        self.source_split = source.train
        return concat_splits(self.train_split, source.train)

    def _stream(self, split: Split, normalizer, weights: Optional[torch.Tensor] = None) -> BatchStream:
        augment = self.train_stream.augment
        if weights is not None:
            return WeightedBatchStream(split, self.config.data.batch_size, normalizer, self.device, weights,
                                       seed=self.config.seed, augment=augment)
        return BatchStream(split, self.config.data.batch_size, normalizer, self.device, seed=self.config.seed,
                           augment=augment, shuffle=True, drop_last=True)

    def _item_weights(self, model: TransferModel) -> Optional[torch.Tensor]:
        """Importance weights of the concatenated training split (target items weigh 1)."""
        if self.settings.importance == "none" or self.n_target is None:
            return None
        target, source = Split(self.data.train.x, self.data.train.y), self.source_split
        if self.settings.importance == "features":
            xs = compute_features(model, source, self.normalizer, self.device)
            xt = compute_features(model, target, self.normalizer, self.device)
        else:
            xs, xt = self.normalizer(source.x.to(self.device)).cpu(), self.normalizer(target.x.to(self.device)).cpu()
        self.source_weights = importance_weights(xs, xt, clip=tuple(self.settings.importance_clip),
                                                 seed=self.config.seed)
        return torch.cat([torch.ones(self.n_target), self.source_weights])

    # ------------------------------------------------------------------ members
    def build_transfer_model(self) -> TransferModel:
        member_config = self.config.members[0]
        base = self.data.model_kwargs()
        backbones = []
        for index, spec in enumerate(self.settings.backbones):
            kwargs = dict(base)
            if spec.input_size or spec.input_pad:
                size = (spec.input_size or base["image_size"]) + 2 * spec.input_pad
                kwargs["image_size"] = size
                kwargs["in_features"] = base["in_channels"] * size * size
            backbones.append(load_backbone(spec, f"transfer.backbones.{index}", member_config, kwargs))
        self._check_member_model(backbones)
        torch.manual_seed(member_seed(self.config.seed, 0))
        mean, std = self.data.mean, self.data.std
        background = [-m / s for m, s in zip(mean, std)] if self.data.is_image else None
        model = TransferModel(backbones, self.data.num_classes, [s.input_size for s in self.settings.backbones],
                              dropout=self.settings.head_dropout,
                              input_pads=[s.input_pad for s in self.settings.backbones], background=background)
        return model.to(self.device)

    def _check_member_model(self, backbones: list) -> None:
        """``members.0.model`` names the backbone architecture: it builds a weights file given without ``model``,
        and at least one backbone must be of it (a run directory or timm brings its own architecture; a
        ``members.0.model`` that no backbone uses would be silently ignored)."""
        member_config = self.config.members[0]
        used = [b.network_record["model"] for b in backbones if b.network_record["kind"] == "registry"]
        if used and member_config.model not in used:  # (timm backbones alone: the name is timm's)
            raise ConfigError(f"Invalid config: key 'members.0.model' has the value {member_config.model!r}, but the "
                              f"transfer network is built from 'transfer.backbones', whose architecture is "
                              f"{', '.join(dict.fromkeys(used))}; set members.0.model to it.")

    def build_cohort(self) -> Cohort:
        model = self.build_transfer_model()
        self._check_input_fits(model)
        weights = self._item_weights(model)
        if self.settings.mode == "features":
            self._use_cached_features(model, weights)
        elif self.train_split is not self.data.train:
            self.train_stream = self._stream(self.train_split, self.normalizer, weights)
        member = Member(self.config.members[0].name, model, trainable=True,
                        info={"model": "transfer", "backbones": [s.model_dump() for s in self.settings.backbones]})
        self.cohort = Cohort([member])
        return self.cohort

    def _check_input_fits(self, model: TransferModel) -> None:
        x = self.normalizer(self.data.train.x[:2].to(self.device))
        try:
            with torch.no_grad():
                model.eval()
                model.backbone_features(x)
        except RuntimeError as error:
            raise ConfigError(f"Invalid config: the backbone cannot read the target inputs of shape "
                              f"{tuple(self.data.input_shape)} ({str(error).splitlines()[0][:200]}); set "
                              "data.image_size (or transfer.backbones.N.input_size) to the source's input size."
                              ) from None

    def _use_cached_features(self, model: TransferModel, weights: Optional[torch.Tensor]) -> None:
        splits = {"train": self.train_split, "val": self.data.val, "test": self.data.test}
        features, path, hit = cached_features(model, splits, self.normalizer, self.device,
                                              self.settings.cache_dir, self.config.data.eval_batch_size)
        self.cache_info = {"cache_file": str(path), "cache_hit": hit}
        model.head_only = True
        model.set_feature_standardisation(features["train"])
        normalizer = identity_normalizer(model.feature_dim, self.device)
        self.train_stream = self._stream(feature_split(features["train"], self.train_split), normalizer, weights)
        self.train_stream.augment = None
        self.eval_streams = {
            name: BatchStream(feature_split(features[name], splits[name]), self.config.data.eval_batch_size,
                              normalizer, self.device, shuffle=False)
            for name in ("val", "test")
        }

    # ------------------------------------------------------------------ stages
    def trainable_groups(self, stage_index: int) -> int:
        """How many backbone groups train in stage ``stage_index`` (0 = head only)."""
        mode = self.settings.mode
        if mode == "features":
            return 0
        if mode == "finetune":
            return self.settings.groups
        return stage_index if stage_index < len(self.settings.unfreeze_at) else len(self.settings.unfreeze_at)

    def group_lr_factors(self) -> list[float]:
        groups = self.settings.groups
        if self.settings.lr_multipliers is not None:
            return list(self.settings.lr_multipliers)
        decay = self.settings.layer_decay or 1.0
        return [decay ** k for k in range(groups + 1)]

    def configure(self, trainable: int, epochs: int) -> None:
        """Freeze all but the head and the ``trainable`` deepest groups; new optimizer and schedule."""
        member = self.cohort.trainable[0]
        model: TransferModel = member.model
        groups = self.settings.groups
        param_groups = model.parameter_groups(groups)
        module_groups = model.group_modules(groups)
        frozen_bn = []
        for k, (params, modules) in enumerate(zip(param_groups, module_groups)):
            active = k <= trainable
            for p in params:
                p.requires_grad_(active)
            if k > 0 and (not active or self.settings.freeze_bn):
                frozen_bn.extend(batchnorm_layers(modules))
        for bn in frozen_bn:
            for p in bn.parameters(recurse=False):
                p.requires_grad_(False)
        model.frozen_bn = frozen_bn
        optim_config = self.config.member_optim(self.config.members[0])
        factors = self.group_lr_factors()
        entries = []
        for k in range(trainable + 1):
            params = [p for p in param_groups[k] if p.requires_grad]
            if params:
                entries.append({"params": params, "lr": optim_config.lr * factors[k]})
        member.optimizer = build_optimizer(entries, optim_config)
        member.schedule = build_schedule(member.optimizer, self.config.member_schedule(self.config.members[0]),
                                         epochs, len(self.train_stream))
        model.train(model.training)

    def stages(self) -> list[Stage]:
        epochs = self.config.train.epochs
        if self.settings.mode != "staged":
            name = "head" if self.settings.mode == "features" else "finetune"
            trainable = self.trainable_groups(0)
            return [Stage(name, epochs, self.step, start=lambda: self.configure(trainable, epochs))]
        bounds = [0, *self.settings.unfreeze_at, epochs]
        stages = []
        for index in range(len(bounds) - 1):
            length = bounds[index + 1] - bounds[index]
            stages.append(Stage(f"unfreeze{index}" if index else "head", length, self.step,
                                start=lambda i=index, n=length: self.configure(self.trainable_groups(i), n)))
        return stages

    # ------------------------------------------------------------------ step
    def _needs_features(self) -> bool:
        """The transfer network's features feed the domain alignment and the feature regularisers."""
        return True

    def losses(self, out, batch, names: list[str]):
        """CE (+ the shared regularisers) of the transfer network, plus ``align_weight`` · the alignment of the
        batch's source and target features (CORAL / MMD) when the batch holds at least two of each."""
        (name,) = names
        logits, features = out.logits[name], out.features[name]
        loss = self.supervised_loss(name, logits, batch.y, features)
        parts: dict[str, Any] = dict(self.regularizer.last_parts.get(name, {}))  # ce and any regulariser terms
        if self.settings.align != "none":
            is_source = domain_of(batch.index, self.n_target)
            if int(is_source.sum()) >= 2 and int((~is_source).sum()) >= 2:
                align = ALIGNMENT_LOSSES[self.settings.align](features[is_source], features[~is_source])
                loss = loss + self.settings.align_weight * align
                parts["align"] = align.detach()
        return {name: (loss, parts)}

    def network_record(self, member: Member) -> dict[str, Any]:
        """The whole network (backbones → standardised features → head), fed images: in features mode too,
        where training fed the head cached features, the rebuilt module reads images."""
        model: TransferModel = member.model
        return {"kind": "transfer", "backbones": [b.network_record for b in model.backbones],
                "num_classes": self.data.num_classes, "input_sizes": list(model.input_sizes),
                "input_pads": list(model.input_pads), "background": model.background.flatten().tolist(),
                "dropout": self.settings.head_dropout}

    def describe_run(self) -> dict[str, Any]:
        record = super().describe_run()
        record["transfer"] = {"mode": self.settings.mode}
        if self.cache_info:
            record["feature_cache"] = {"key": Path(self.cache_info["cache_file"]).stem, **self.cache_info}
        return record

    def summary_extra(self) -> dict[str, Any]:
        model: TransferModel = self.cohort.trainable[0].model
        info: dict[str, Any] = {"mode": self.settings.mode, "feature_dim": model.feature_dim, **self.cache_info}
        extra = super().summary_extra()
        if self.n_target is not None:
            info["source_items"] = len(self.train_split) - self.n_target
        if self.source_weights is not None:
            info["importance_ess"] = round(effective_sample_size(self.source_weights), 1)
        return {**extra, "transfer": info}
