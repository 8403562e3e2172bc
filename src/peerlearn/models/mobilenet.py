"""MobileNet v1 (Howard et al. 2017) adapted to CIFAR-sized images.

Every layer after the stem is a depthwise-separable convolution: a 3x3 depthwise conv
(one filter per channel) - BN - ReLU, then a 1x1 pointwise conv - BN - ReLU. Channel
counts are multiplied by ``width_mult`` (the paper's alpha). With ``w = width_mult``:

    conv3x3(C -> 32w, stride 1) - BN - ReLU             # H x W   (ImageNet: stride 2)
    dw-sep 64w                                         # H x W
    dw-sep 128w stride 2, dw-sep 128w                  # H/2
    dw-sep 256w stride 2, dw-sep 256w                  # H/4
    dw-sep 512w stride 2, 5 x dw-sep 512w              # H/8
    dw-sep 1024w stride 2, dw-sep 1024w                # H/16
    adaptive average pool -> 1024w features -> [dropout] -> linear

A 32x32 input therefore reaches 2x2 before pooling (28x28 -> 2x2, 8x8 -> 1x1), where
ImageNet's 224x224 reaches 7x7 after five stride-2 stages. About 3.3M parameters at
width 1 with 100 classes (0.24M at ``width_mult=0.25``).
"""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model

# (output channels, stride) of the depthwise-separable layers, before width scaling.
LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
          (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
          (1024, 2), (1024, 1))
STEM_CHANNELS = 32


def scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv - BN - ReLU - 1x1 pointwise conv - BN - ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class MobileNet(PeerModel):
    """MobileNet v1 with a stride-1 stem; features are the pooled last-layer channels."""

    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        cin = scaled(STEM_CHANNELS, width_mult)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        for channels, stride in LAYERS:
            cout = scaled(channels, width_mult)
            layers.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
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
        """``stem`` = ``body.2``; ``stage1``..``stage5`` = the last depthwise-separable layer at each resolution
        (H, H/2, H/4, H/8, H/16: ``body.3``, ``body.5``, ``body.7``, ``body.13``, ``body.15``); ``features``;
        ``classifier``."""
        first = 3  # body = conv, BN, ReLU, then the depthwise-separable layers
        ends = [i for i in range(len(LAYERS)) if i + 1 == len(LAYERS) or LAYERS[i + 1][1] == 2]
        stages = {f"stage{k}": f"body.{first + i}" for k, i in enumerate(ends, start=1)}
        return {"stem": f"body.{first - 1}", **stages, **super().stage_paths()}


@register_model("mobilenet")
def mobilenet(num_classes: int, in_channels: int, width_mult: float = 1.0, dropout: float = 0.0) -> MobileNet:
    return MobileNet(num_classes, in_channels, width_mult, dropout)
