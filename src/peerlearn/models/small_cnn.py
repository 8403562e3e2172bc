"""A small CNN for 28x28 / 32x32 / 8x8 images: fast on a CPU, big enough to overfit a few thousand images."""

from __future__ import annotations

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(PeerModel):
    """[conv-bn-relu ×2, maxpool] ×2 at widths (w, 2w), global average pool, dropout, linear."""

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, width), conv_bn_relu(width, width), nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width), conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feature_dim = 2 * width
        self.classifier = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.body(x))

    def stage_paths(self) -> dict[str, str]:
        """``stage1`` = ``body.2`` (w channels, H/2 after the first max pool), ``stage2`` = ``body.5`` (2w, H/4),
        then ``features`` and ``classifier``."""
        return {"stage1": "body.2", "stage2": "body.5", **super().stage_paths()}


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int, width: int = 32, dropout: float = 0.0) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width, dropout)
