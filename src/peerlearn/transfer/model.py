"""The transfer network: pretrained backbone(s) → concatenated bottleneck features → a new head.

With B backbones f_1 … f_B (each fed the input resized, and optionally padded, to its own
resolution: x_b), features standardised by a fixed shift μ and scale σ,

    z(x) = W · ([f_1(x_1) ; … ; f_B(x_B)] − μ) / σ + b

(μ, σ are the mean and std of the training features in ``features`` mode, 0 and 1 otherwise).

The backbone parameters are split into ordered groups for staged unfreezing and per-group learning
rates: group 0 is the new head, group 1 the deepest part of the backbones, group G the shallowest.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.models.base import PeerModel

_BATCHNORM = nn.modules.batchnorm._BatchNorm


class TransferModel(PeerModel):
    """Backbones whose features are concatenated and classified by a fresh linear layer.

    ``head_only`` makes ``forward`` take bottleneck features instead of images (features mode,
    where the backbone outputs are cached). BatchNorm layers listed in ``frozen_bn`` stay in eval
    mode whatever ``train()`` is asked, so their running statistics never change.
    """

    def __init__(self, backbones: Sequence[PeerModel], num_classes: int,
                 input_sizes: Optional[Sequence[Optional[int]]] = None, dropout: float = 0.0,
                 input_pads: Optional[Sequence[int]] = None, background: Optional[Sequence[float]] = None):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)
        self.input_sizes = list(input_sizes or [None] * len(backbones))
        self.input_pads = list(input_pads or [0] * len(backbones))
        self.feature_dim = sum(int(b.feature_dim) for b in backbones)
        # value of a blank (0) pixel after normalisation, per channel: what padding fills in
        self.register_buffer("background", torch.tensor(list(background or [0.0])).reshape(1, -1, 1, 1))
        # features are standardised, (f − shift) / scale: identity unless set from the training features
        self.register_buffer("feature_shift", torch.zeros(self.feature_dim))
        self.register_buffer("feature_scale", torch.ones(self.feature_dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.head_only = False
        self.frozen_bn: list[nn.Module] = []

    def adapt_input(self, x: torch.Tensor, size: Optional[int], pad: int) -> torch.Tensor:
        """Resize to ``size`` (bilinear), then pad ``pad`` blank pixels on each side."""
        if x.dim() != 4:
            return x
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if pad:
            x = F.pad(x - self.background, (pad, pad, pad, pad)) + self.background
        return x

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concatenated bottleneck features [f_1(x_1); …; f_B(x_B)] (not standardised)."""
        parts = [backbone.features(self.adapt_input(x, size, pad))
                 for backbone, size, pad in zip(self.backbones, self.input_sizes, self.input_pads)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised bottleneck features; with ``head_only`` ``x`` already holds the raw features."""
        feats = x if self.head_only else self.backbone_features(x)
        return self.dropout((feats - self.feature_shift) / self.feature_scale)

    def set_feature_standardisation(self, train_features: torch.Tensor) -> None:
        """shift, scale = mean and std of the training features (a linear head trains far better on them)."""
        self.feature_shift.copy_(train_features.mean(0))
        self.feature_scale.copy_(train_features.std(0).clamp_min(1e-6) if len(train_features) > 1
                                 else torch.ones_like(self.feature_scale))

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        for module in self.frozen_bn:
            module.eval()
        return self

    # ------------------------------------------------------------------ groups
    def parameter_groups(self, groups: int) -> list[list[nn.Parameter]]:
        """[head, deepest backbone group, …, shallowest]: backbone modules in definition order, cut into
        ``groups`` contiguous runs (each backbone alike, so group k holds the k-th deepest part of all)."""
        result: list[list[nn.Parameter]] = [list(self.classifier.parameters())] + [[] for _ in range(groups)]
        for backbone in self.backbones:
            for k, params in enumerate(split_modules(backbone, groups)):
                result[groups - k].extend(params)  # k = 0 is the shallowest part → last group
        return result

    def group_modules(self, groups: int) -> list[list[nn.Module]]:
        """Like ``parameter_groups`` but the modules (to find the BatchNorm layers of a group)."""
        result: list[list[nn.Module]] = [[self.classifier]] + [[] for _ in range(groups)]
        for backbone in self.backbones:
            for k, modules in enumerate(split_module_list(backbone, groups)):
                result[groups - k].extend(modules)
        return result


def _leaf_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that own parameters directly, in definition order."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


def split_module_list(model: nn.Module, groups: int) -> list[list[nn.Module]]:
    """The parameter-owning modules cut into ``groups`` contiguous runs of near-equal parameter count."""
    leaves = _leaf_modules(model)
    sizes = [sum(p.numel() for p in m.parameters(recurse=False)) for m in leaves]
    total = max(sum(sizes), 1)
    result: list[list[nn.Module]] = [[] for _ in range(groups)]
    seen = 0
    for module, size in zip(leaves, sizes):
        # place by the middle of the module's parameter range
        k = min(groups - 1, int((seen + size / 2) * groups / total))
        result[k].append(module)
        seen += size
    return result


def split_modules(model: nn.Module, groups: int) -> list[list[nn.Parameter]]:
    return [[p for m in run for p in m.parameters(recurse=False)] for run in split_module_list(model, groups)]


def batchnorm_layers(modules: Sequence[nn.Module]) -> list[nn.Module]:
    return [m for m in modules if isinstance(m, _BATCHNORM)]
