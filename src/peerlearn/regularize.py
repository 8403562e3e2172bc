"""The regularisers every recipe shares, added to each member's supervised term.

    L = CE_ε(z, y) + λ₁ Σ|w| + λ₂/2 Σ w² + λ_C · 1/(2m) Σ_i ‖f_i − c_{y_i}‖²

CE_ε is cross-entropy with label smoothing ε; w runs over the weight matrices and kernels of the
member's trainable parameters (tensors with two or more dimensions: not biases, not BatchNorm scales);
f_i are the penultimate features and c_j the class centres of the centre loss (Wen et al. 2016), kept
per member and moved by the paper's update rule after each step. See docs/regularization.md.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from peerlearn.config import RegularizeConfig
from peerlearn.errors import PeerlearnError
from peerlearn.losses import center_loss, cross_entropy, l1_penalty, l2_penalty, update_centers


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    """The trainable weight matrices and kernels of ``model`` (dim ≥ 2): what L1/L2 penalise."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


class Regularizer:
    """Applies ``regularize:`` to one supervised term; owns the centre-loss centres of every member."""

    def __init__(self, config: RegularizeConfig, num_classes: int):
        self.config = config
        self.num_classes = num_classes
        self.centers: dict[str, torch.Tensor] = {}
        self.last_parts: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def needs_features(self) -> bool:
        """True when the recipe must pass penultimate features to ``supervised_loss``."""
        return self.config.center_loss > 0

    def centers_for(self, member: str, features: torch.Tensor) -> torch.Tensor:
        """The member's centres [C, d], created at zero on first use (d = the feature width)."""
        centers = self.centers.get(member)
        if centers is None or centers.shape[1] != features.shape[1]:
            centers = torch.zeros(self.num_classes, features.shape[1], device=features.device)
            self.centers[member] = centers
        return centers.to(features.device)

    def loss(self, member: str, model: Optional[nn.Module], logits: torch.Tensor, labels: torch.Tensor,
             features: Optional[torch.Tensor] = None) -> torch.Tensor:
        settings = self.config
        loss = cross_entropy(logits, labels, settings.label_smoothing)
        parts = {"ce": loss.detach()}
        if (settings.l1 > 0 or settings.l2 > 0) and model is not None:
            weights = penalized_weights(model)
            if weights and settings.l1 > 0:
                term = l1_penalty(weights)
                loss = loss + settings.l1 * term
                parts["l1"] = term.detach()
            if weights and settings.l2 > 0:
                term = l2_penalty(weights)
                loss = loss + settings.l2 * term
                parts["l2"] = term.detach()
        if settings.center_loss > 0:
            if features is None:
                raise PeerlearnError(
                    "regularize.center_loss is on, but this recipe did not pass the members' penultimate features "
                    "to supervised_loss; it cannot use the centre loss (set regularize.center_loss=0)."
                )
            centers = self.centers_for(member, features)
            term = center_loss(features, labels, centers)
            loss = loss + settings.center_loss * term
            parts["center"] = term.detach()
            if torch.is_grad_enabled():  # a training step: move the centres (Wen et al. eq. 4)
                update_centers(centers, features, labels, settings.center_alpha)
                self.centers[member] = centers
        self.last_parts[member] = parts
        return loss

    def state_dict(self) -> dict:
        return {"centers": {name: c.detach().cpu().clone() for name, c in self.centers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.centers = {name: c.clone() for name, c in (state or {}).get("centers", {}).items()}
