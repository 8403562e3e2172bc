"""Hard-label cross-entropy with unlabelled items, and the entropy of predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.losses.checks import check_interval, check_labels, check_matrix


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(softmax(z), y) = −mean_i log softmax(z_i)[y_i] over the labelled items.

    Shapes: ``logits`` [N, C], ``labels`` [N] (int64). Items with label −1 are left out; a batch without a
    labelled item gives 0 (with a graph, so ``backward`` still works). ``label_smoothing`` ε mixes the
    one-hot target with the uniform distribution: (1 − ε)·onehot + ε/C.
    """
    check_matrix(logits, "logits")
    check_labels(labels, logits)
    check_interval(label_smoothing, "label_smoothing", 0.0, 1.0)
    labelled = labels >= 0
    if bool(labelled.all()):  # every item labelled (the usual batch): no masking, the same value
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=label_smoothing)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_m p_m log p_m for each row of ``probs`` [N, C] (nats); returns [N]."""
    return -torch.xlogy(probs, probs).sum(1)
