"""The contract every peerlearn model keeps: logits from ``forward``, penultimate features on request."""

from __future__ import annotations

import torch
from torch import nn


class PeerModel(nn.Module):
    """A classifier split into a feature extractor and a final linear ``classifier``.

    ``forward(x)`` returns logits; ``features(x)`` returns the penultimate features (the
    "bottleneck" used by feature losses, retrieval and transfer); ``forward_with_features``
    returns both from one pass. Subclasses implement ``features`` and set ``classifier``
    and ``feature_dim``.
    """

    feature_dim: int
    classifier: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.classifier(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a fresh one for ``num_classes`` (transfer learning)."""
        self.classifier = nn.Linear(self.feature_dim, num_classes)
