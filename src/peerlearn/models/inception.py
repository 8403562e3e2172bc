"""Inception-v1 (GoogLeNet, Szegedy et al. 2015) adapted to CIFAR-sized images, without auxiliary heads.

Every convolution is conv - BN - ReLU (batch norm is a later addition to the 2015 design).
An inception module concatenates four branches:

    1x1 conv                         (c1 channels)
    1x1 conv (r3) -> 3x3 conv        (c3 channels)
    1x1 conv (r5) -> 5x5 conv        (c5 channels)
    3x3 max pool, stride 1 -> 1x1    (cp channels)

Network, with GoogLeNet's branch widths (c1, r3, c3, r5, c5, cp) and output channels:

    stem: conv3x3(C -> 192, stride 1)                  # H x W   (ImageNet: 7x7/2 stem + pools)
    3a (64, 96, 128, 16, 32, 32) -> 256
    3b (128, 128, 192, 32, 96, 64) -> 480
    max pool 3x3/2                                     # H/2
    4a (192, 96, 208, 16, 48, 64) -> 512
    4b (160, 112, 224, 24, 64, 64) -> 512
    4c (128, 128, 256, 24, 64, 64) -> 512
    4d (112, 144, 288, 32, 64, 64) -> 528
    4e (256, 160, 320, 32, 128, 128) -> 832
    max pool 3x3/2                                     # H/4
    5a (256, 160, 320, 32, 128, 128) -> 832
    5b (384, 192, 384, 48, 128, 128) -> 1024
    adaptive average pool -> 1024 features -> [dropout] -> linear

``width_mult`` scales every channel count (stem and each branch): with 100 classes the full
network has about 6.0M parameters and ``width_mult=0.25`` a 256-feature network of about 0.4M.
The original uses dropout 0.4 before the classifier; here it is an option (default off).
"""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model

STEM_CHANNELS = 192
# name -> (c1, r3, c3, r5, c5, cp); "pool" marks a 3x3 stride-2 max pool.
STAGES: tuple[tuple[str, tuple[int, ...]] | str, ...] = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "pool",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "pool",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->5x5; maxpool->1x1) concatenated on channels."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, cp: int):
        super().__init__()
        self.branch1 = conv_bn_relu(cin, c1, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(cin, r3, 1), conv_bn_relu(r3, c3, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(cin, r5, 1), conv_bn_relu(r5, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


def scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class InceptionV1(PeerModel):
    """GoogLeNet for small images: stride-1 3x3 stem, nine inception modules, two max pools."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        cin = scaled(STEM_CHANNELS, width_mult)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, cin, 3)]
        for stage in STAGES:
            if stage == "pool":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                continue
            _, widths = stage
            module = InceptionModule(cin, *(scaled(c, width_mult) for c in widths))
            layers.append(module)
            cin = module.out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
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
        return self.dropout(self.body(x))

    def stage_paths(self) -> dict[str, str]:
        """``stem`` = ``body.0``; ``inception3a``..``inception5b`` = each inception module; ``stage1``..``stage3`` =
        the last module at each resolution (3b at H, 4e at H/2, 5b at H/4); ``features``; ``classifier``."""
        modules, stages, index = {}, {}, 1  # body = stem, then STAGES in order
        for position, stage in enumerate(STAGES):
            if stage != "pool":
                modules[f"inception{stage[0]}"] = f"body.{index}"
                if position + 1 == len(STAGES) or STAGES[position + 1] == "pool":
                    stages[f"stage{len(stages) + 1}"] = f"body.{index}"
            index += 1
        return {"stem": "body.0", **modules, **stages, **super().stage_paths()}


@register_model("inception_v1")
def inception_v1(num_classes: int, in_channels: int, width_mult: float = 1.0, dropout: float = 0.0) -> InceptionV1:
    return InceptionV1(num_classes, in_channels, width_mult, dropout)
