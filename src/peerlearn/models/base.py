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

    ``stage_paths()`` names the network's stages for forward hooks (``peerlearn.models.taps``): stable,
    documented aliases such as ``stage1`` mapped to module paths, so that a config can read a layer
    without knowing how the network is built. The aliases never change the state-dict keys.
    """

    feature_dim: int
    classifier: nn.Module
    # True when ``forward`` only composes the submodules and combines their outputs elementwise (no channel
    # concatenation or reshape across channels): a fused cohort may then pack K copies into one network with
    # grouped layers (``engine.packed``). Each class declares it for itself; subclasses do not inherit a promise
    # about a forward they may change.
    packable = False

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.classifier(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def stage_paths(self) -> dict[str, str]:
        """Alias -> layer (``"module.path"`` = its output, ``"module.path:input"`` = its input), in forward order.

        Every model has ``features`` (the penultimate vector, the classifier's input) and ``classifier``
        (its output: the logits); the zoo's networks add ``stem`` and ``stage1``, ``stage2``, ... (the output
        of each group of blocks, shallow to deep)."""
        path = next((name for name, module in self.named_modules() if module is self.classifier), None)
        return {} if not path else {"features": f"{path}:input", "classifier": path}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a fresh one for ``num_classes`` (transfer learning)."""
        self.classifier = nn.Linear(self.feature_dim, num_classes)
