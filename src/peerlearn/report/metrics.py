"""The small numeric pieces the report needs, kept apart so they can be swapped for shared versions.

* confusion matrix: C[i, j] = #{items with true class i predicted as class j};
  row-normalised R[i, j] = C[i, j] / Σ_j C[i, j] (the recall of class i on the diagonal).
* per-item posterior entropy: H(p(x)) = −Σ_m p_m log p_m (nats), the quantity whose mean
  ``peerlearn.evaluate.analyses.posterior_entropy`` reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.losses import entropy


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``C[true, predicted]`` (int64, num_classes × num_classes); items labelled −1 are ignored."""
    predicted, labels = predicted.reshape(-1).long().cpu(), labels.reshape(-1).long().cpu()
    if predicted.shape != labels.shape:
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    keep = labels >= 0
    flat = labels[keep] * num_classes + predicted[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def row_normalised(counts: torch.Tensor) -> torch.Tensor:
    """R[i, j] = C[i, j] / Σ_j C[i, j]; rows of classes with no item stay 0."""
    totals = counts.sum(1, keepdim=True).clamp_min(1)
    return counts.double() / totals


def item_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Posterior entropy H(softmax(z)) in nats of every item (a vector)."""
    return entropy(F.softmax(logits.float(), dim=1))
