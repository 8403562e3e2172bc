"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based.

A layer's activations A [N, C, H, W] give the spatial attention map F(A) = Σ_c |A_c|^p (p = 2); the student
matches the teacher's L2-normalised maps Q = vec(F(A)) / ‖vec(F(A))‖₂ at several layers j:

    L_AT = β/2 · Σ_j 1/(N·H_j·W_j) · Σ_n ‖Q_S,n^j − Q_T,n^j‖₂            (the paper's eq. 2, β = 10³
                                                                          "divided by the number of elements
                                                                          in the attention map and batch size")

The channel mean and the channel sum give the same Q (the normalisation removes the factor C).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from peerlearn.losses._checks import check_positive, layer_pairs

Layers = Union[torch.Tensor, Sequence[torch.Tensor]]


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Q = vec(mean_c |A_c|^p) / ‖vec(mean_c |A_c|^p)‖₂; [N, C, H, W] → [N, H·W] (rows of unit norm)."""
    check_positive("p", p)
    if features.dim() != 4:
        raise ValueError(f"attention maps need feature maps [N, C, H, W], got {list(features.shape)}")
    summed = features.abs().pow(p).mean(1).flatten(1)
    return F.normalize(summed, dim=1)


def attention_transfer_loss(student_features: Layers, teacher_features: Layers, p: float = 2.0,
                            squared: bool = False) -> torch.Tensor:
    """Σ_j 1/(N·H_j·W_j) · Σ_n d(Q_S,n^j, Q_T,n^j), one term per layer pair; a scalar. Multiply by β/2 = 500.

    ``student_features`` / ``teacher_features``: one feature map [N, C_j, H_j, W_j] or a list, one per layer
    pair j; the channels C_j of student and teacher may differ, N, H_j and W_j must match (pool the larger map
    first otherwise). The teacher's maps are detached.

    * ``squared=False`` (the paper): d = ‖Q_S − Q_T‖₂.
    * ``squared=True`` (the authors' code, ``at_loss``): d = ‖Q_S − Q_T‖₂², i.e. the mean of the squared
      differences over the batch and the positions. The authors weight the sum over layers by β/2 = 500;
      RepDistiller by 1000.

    The weight β/2 is the caller's (a recipe's ``weight``): the paper's β = 10³ gives 500.
    """
    pairs = layer_pairs(student_features, teacher_features)
    total = None
    for j, (a_s, a_t) in enumerate(pairs):
        if a_s.dim() != 4 or a_t.dim() != 4 or a_s.shape[0] != a_t.shape[0] or a_s.shape[2:] != a_t.shape[2:]:
            raise ValueError(f"layer {j}: student and teacher maps must be [N, C, H, W] with the same N, H and W, "
                             f"got {list(a_s.shape)} and {list(a_t.shape)}")
        diff = attention_map(a_s, p) - attention_map(a_t.detach(), p)
        per_item = diff.pow(2).sum(1) if squared else torch.linalg.vector_norm(diff, dim=1)
        term = per_item.sum() / diff.numel()  # numel = N·H_j·W_j
        total = term if total is None else total + term
    return total
