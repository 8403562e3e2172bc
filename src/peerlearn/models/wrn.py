"""Wide Residual Networks WRN-d-k (Zagoruyko & Komodakis 2016).

Architecture for depth ``d`` and widening factor ``k``, with ``n = (d - 4) / 6`` blocks per group:

    conv3x3(C -> 16)                                   # H x W
    group 1: n pre-activation blocks, 16k channels     # H x W
    group 2: n pre-activation blocks, 32k channels     # H/2 (first block strided)
    group 3: n pre-activation blocks, 64k channels     # H/4 (first block strided)
    BN - ReLU - global average pool -> 64k features -> linear

A pre-activation block is ``BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3`` added to a shortcut.
Where the width or resolution changes, the shortcut is a 1x1 convolution of the
pre-activated input; elsewhere it is the identity. WRN-28-10 (about 36.5M parameters) is
the Deep Mutual Learning paper's largest CIFAR network; WRN-16-4 has about 2.7M.
"""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3 with an identity or 1x1-projection shortcut."""

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


def blocks_per_group(depth: int) -> int:
    """``n`` for a depth of the form 6n+4 (n >= 1); ValueError otherwise."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be of the form 6n+4 with n >= 1, i.e. (depth - 4) divisible by 6 "
                         f"(10, 16, 22, 28, 40, ...), got {depth}")
    return (depth - 4) // 6


class WideResNet(PeerModel):
    """WRN-depth-widen_factor; features are the pooled 64k channels after the final BN-ReLU."""

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, widen_factor: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        n = blocks_per_group(depth)
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        self.depth, self.widen_factor = depth, widen_factor
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for group, base in enumerate((16, 32, 64)):
            width = base * widen_factor
            for i in range(n):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(PreActBlock(cin, width, stride, dropout))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def stage_paths(self) -> dict[str, str]:
        """``stem``; ``stage1``..``stage3`` = the last block of each group (16k, 32k, 64k channels at H, H/2, H/4,
        before the final BN-ReLU: the group outputs that attention transfer reads); ``features``; ``classifier``."""
        n = len(self.blocks) // 3
        return {"stem": "stem", **{f"stage{g}": f"blocks.{g * n - 1}" for g in (1, 2, 3)}, **super().stage_paths()}


@register_model("wrn")
def wrn(num_classes: int, in_channels: int, depth: int = 28, widen_factor: int = 10,
        dropout: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth, widen_factor, dropout)


@register_model("wrn_28_10")
def wrn_28_10(num_classes: int, in_channels: int, dropout: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, in_channels, 28, 10, dropout)


@register_model("wrn_16_4")
def wrn_16_4(num_classes: int, in_channels: int, dropout: float = 0.0) -> WideResNet:
    return WideResNet(num_classes, in_channels, 16, 4, dropout)
