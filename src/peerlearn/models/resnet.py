"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2): the 6n+2 family.

Architecture for depth ``6n + 2`` on a ``C x H x W`` image (32x32 in the paper):

    conv3x3(C -> 16) - BN - ReLU                       # H x W
    group 1: n basic blocks, 16 channels, stride 1     # H x W
    group 2: n basic blocks, 32 channels, stride 2     # H/2 x W/2
    group 3: n basic blocks, 64 channels, stride 2     # H/4 x W/4
    global average pool -> 64 features -> linear

A basic block is ``conv3x3-BN-ReLU-conv3x3-BN`` plus a shortcut, then ReLU. Where the block
changes width or resolution the shortcut is a 1x1 convolution + BN projection ("option B");
elsewhere it is the identity. ResNet-20/32/56 have n = 3/5/9 and about 0.27M/0.47M/0.86M
parameters with 10 classes (the paper's zero-padding "option A" shortcuts give 0.27M/0.46M/0.85M).
ResNet-32 is the network of the Deep Mutual Learning paper's CIFAR experiments.
"""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model

WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (projection when the shape changes)."""

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                                     nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def blocks_per_group(depth: int) -> int:
    """``n`` for a depth of the form 6n+2 (n >= 1); ValueError otherwise."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be of the form 6n+2 with n >= 1 "
                         f"(8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


class CifarResNet(PeerModel):
    """ResNet-(6n+2) for small images; features are the 64 globally pooled channels (after optional dropout)."""

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        n = blocks_per_group(depth)
        self.depth = depth
        self.stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(WIDTHS[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = WIDTHS[0]
        for group, width in enumerate(WIDTHS):
            for i in range(n):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feature_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.blocks(self.stem(x))))

    def stage_paths(self) -> dict[str, str]:
        """``stem``; ``stage1``..``stage3`` = the last block of each group (16, 32, 64 channels at H, H/2, H/4:
        ``blocks.{n-1}``, ``blocks.{2n-1}``, ``blocks.{3n-1}``); ``features``; ``classifier``."""
        n = len(self.blocks) // len(WIDTHS)
        stages = {f"stage{g}": f"blocks.{g * n - 1}" for g in range(1, len(WIDTHS) + 1)}
        return {"stem": "stem", **stages, **super().stage_paths()}


@register_model("cifar_resnet")
def cifar_resnet(num_classes: int, in_channels: int, depth: int = 32, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(depth, num_classes, in_channels, dropout)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels, dropout)


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels, dropout)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, dropout)
