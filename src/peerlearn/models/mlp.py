"""Fully connected networks, e.g. Hinton's 784-1200-1200-10 teacher and 784-800-800-10 student."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model


class MLP(PeerModel):
    """Flatten -> [input dropout] -> (Linear -> ReLU -> dropout) per hidden width -> Linear.

    Features are the last hidden layer's activations (after its dropout).
    """

    packable = True  # forward composes its layers channel-wise (engine.packed)

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int] = (800, 800),
                 dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = previous
        self.classifier = nn.Linear(previous, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stage_paths(self) -> dict[str, str]:
        """``stage<k>`` = the ReLU of hidden layer k (its activations before dropout), then ``features`` and
        ``classifier``."""
        relus = [f"body.{index}" for index, layer in enumerate(self.body) if isinstance(layer, nn.ReLU)]
        return {**{f"stage{k}": path for k, path in enumerate(relus, start=1)}, **super().stage_paths()}


@register_model("mlp")
def mlp(num_classes: int, in_features: int, widths: Sequence[int] = (800, 800), dropout: float = 0.0,
        input_dropout: float = 0.0) -> MLP:
    return MLP(in_features, num_classes, widths, dropout, input_dropout)
