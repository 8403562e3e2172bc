"""The ``transfer`` section: pretrained backbones, a new head, source-domain data (recipe ``transfer``)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from peerlearn.config.schema import Section, known_source


class BackboneConfig(Section):
    """One pretrained feature extractor of the transfer recipe."""

    source: str = Field(..., description="a peerlearn run directory, a .safetensors file, a .pt state dict "
                                         "(loaded weights-only) or timm:<model name> (needs the timm extra)")
    member: Optional[str] = Field(None, description="run directory / multi-member file: which member "
                                                     "(default: the first)")
    model: Optional[str] = Field(None, description="architecture of a weights file (default: the run's, "
                                                    "else members.0.model)")
    model_args: Optional[dict[str, Any]] = Field(None, description="its options (default: the run's, "
                                                                   "else members.0.model_args)")
    input_size: Optional[int] = Field(None, gt=0, description="resize inputs to this size for this backbone "
                                                              "(e.g. two backbones at two resolutions)")
    input_pad: int = Field(0, ge=0, description="after the resize, pad this many background pixels on each side "
                                                "(digits: input_size 20 + input_pad 4 = MNIST's 28x28 layout)")
    pretrained: bool = Field(True, description="timm only: download the pretrained weights")


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
