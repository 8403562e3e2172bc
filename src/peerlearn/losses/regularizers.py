"""Weight penalties and the centre loss (Wen, Zhang, Li, Qiao, ECCV 2016).

The functions take the centres as an argument; ``CenterLoss`` is the ``nn.Module`` that owns them (as a
buffer, so they follow ``.to(device)`` and ``state_dict``) and moves them after each training call.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from peerlearn.losses.checks import check_interval, check_labels, check_matrix


def _check_centres(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> None:
    """features [N, D], labels [N], centres [C, D] of the same D."""
    check_matrix(features, "features")
    check_labels(labels, features, logits_name="features")
    check_matrix(centers, "centers")
    if centers.shape[1] != features.shape[1]:
        raise ValueError(f"centers must have the features' size {features.shape[1]} per class, got shape "
                         f"{list(centers.shape)}")


def l1_penalty(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_w Σ_j |w_j| over the given weight tensors of any shapes (multiply by λ₁ outside); a scalar."""
    return sum(w.abs().sum() for w in weights)


def l2_penalty(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """½ Σ_w Σ_j w_j² over the given weight tensors of any shapes (multiply by λ₂ outside; gradient λ₂·w)."""
    return 0.5 * sum((w**2).sum() for w in weights)


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Centre loss, averaged over the labelled items of the batch:

        L_C = 1/(2m) · Σ_i ‖f_i − c_{y_i}‖²

    Shapes: ``features`` [N, D], ``labels`` [N], ``centers`` [C, D]. The paper sums over the mini-batch
    (½ Σ_i) and sums its softmax loss too; here both the CE and this term are batch means, so the weight λ
    has the paper's meaning. The centres are constants here (they move by ``update_centers``), so the
    gradient is ∂L_C/∂f_i = (f_i − c_{y_i}) / m. Items with label −1 are ignored; a batch without labels
    gives 0.
    """
    _check_centres(features, labels, centers)
    labelled = labels >= 0
    if not bool(labelled.any()):
        return features.sum() * 0.0
    diff = features[labelled] - centers.detach()[labels[labelled]]
    return 0.5 * (diff**2).sum(1).mean()


@torch.no_grad()
def update_centers(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
    """The centre update of Wen et al. (eq. 4), in place, for the classes present in the batch:

        Δc_j = Σ_i δ(y_i = j)(c_j − f_i) / (1 + Σ_i δ(y_i = j)),    c_j ← c_j − α · Δc_j

    Shapes: ``centers`` [C, D] (changed in place), ``features`` [N, D], ``labels`` [N] (−1 rows ignored).
    """
    _check_centres(features, labels, centers)
    check_interval(alpha, "alpha", 0.0, 1.0, open_low=True)
    labelled = labels >= 0
    feats, ys = features.detach()[labelled].to(centers.dtype), labels[labelled]
    if len(ys) == 0:
        return
    counts = torch.bincount(ys, minlength=centers.shape[0]).to(centers.dtype)
    sums = torch.zeros_like(centers).index_add_(0, ys, feats)
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    centers.sub_(alpha * delta)


class CenterLoss(nn.Module):
    """``center_loss`` with its own class centres [num_classes, feature_dim] (a buffer, starting at 0).

    Calling it returns L_C for the batch; in training mode with gradients enabled it then moves the centres
    by ``update_centers`` (rate ``alpha``), so one call per step is all a loop needs::

        centre = CenterLoss(num_classes=10, feature_dim=64)
        loss = F.cross_entropy(logits, y) + 0.01 * centre(features, y)
    """

    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5):
        super().__init__()
        check_interval(alpha, "alpha", 0.0, 1.0, open_low=True)
        for name, value in (("num_classes", num_classes), ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.centers.shape[1]:
            raise ValueError(f"CenterLoss expects features of shape [N, {self.centers.shape[1]}], "
                             f"got {list(features.shape)}")
        loss = center_loss(features, labels, self.centers)
        if self.training and torch.is_grad_enabled():
            update_centers(self.centers, features, labels, self.alpha)
        return loss
