"""Relational distillation: the student reproduces how the teacher relates the items of a batch to each other.

* SP, similarity preserving (Tung & Mori, ICCV 2019): the batch's row-normalised Gram matrices.
* RKD, relational KD (Park, Kim, Lu, Cho, CVPR 2019): distances between pairs and angles in triplets.
* PKT, probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the distributions of pairwise cosine
  similarities.

Each takes the student's and the teacher's features of the same b items, [b, ...] each (flattened per item;
the widths of student and teacher may differ), and detaches the teacher's. None of them needs a connector.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from peerlearn.losses._checks import check_choice, check_non_negative, check_same_batch, layer_pairs

Layers = Union[torch.Tensor, Sequence[torch.Tensor]]
RKD_REDUCTIONS = ("mean", "sum")
PKT_VARIANTS = ("paper", "code")


def _flat(features: torch.Tensor) -> torch.Tensor:
    return features.flatten(1)


# --- SP ------------------------------------------------------------------------------------------------------


def similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """G̃ = row-L2-normalised Q Qᵀ, Q = the features flattened per item; [b, ...] → [b, b]."""
    q = _flat(features)
    return F.normalize(q @ q.T, dim=1)


def similarity_preserving_loss(student_features: Layers, teacher_features: Layers) -> torch.Tensor:
    """Tung & Mori's L_SP = Σ_pairs 1/b² · ‖G̃_T − G̃_S‖_F²; a scalar. The paper's weight γ is 3000 (CIFAR-10).

    G = Q Qᵀ [b, b] is the Gram matrix of the b items' flattened activations Q [b, c·h·w], and G̃ divides each
    row of G by its L2 norm. ``student_features`` / ``teacher_features`` are one [b, ...] tensor each or lists
    of layer pairs (summed, as the paper sums over its set of pairs). Paper and the authors' code agree
    (Frobenius norm squared over b²). G̃ does not change when a network's activations are scaled by a
    positive constant or rotated (Q → Q·R, R orthogonal), so neither does the loss.
    """
    pairs = layer_pairs(student_features, teacher_features)
    total = None
    for f_s, f_t in pairs:
        check_same_batch("student_features", f_s, "teacher_features", f_t, minimum=1)
        b = f_s.shape[0]
        diff = similarity_matrix(f_t.detach()) - similarity_matrix(f_s)
        term = diff.pow(2).sum() / (b * b)
        total = term if total is None else total + term
    return total


# --- RKD -----------------------------------------------------------------------------------------------------


def _huber(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise Huber loss l_δ with δ = 1: ½ (x − y)² where |x − y| ≤ 1, |x − y| − ½ elsewhere."""
    return F.smooth_l1_loss(x, y, reduction="none", beta=1.0)


def _pair_distances(e: torch.Tensor) -> torch.Tensor:
    """ψ_D: ‖e_i − e_j‖₂ over the pairs i < j, divided by their mean (the paper's μ); [b, d] → [b(b−1)/2]."""
    d = torch.pdist(e)
    return d / d.mean()


def rkd_distance_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor:
    """RKD-D: Σ_(i,j) l_δ(ψ_D(t_i, t_j), ψ_D(s_i, s_j)), ψ_D(t_i, t_j) = ‖t_i − t_j‖₂ / μ; a scalar.

    μ is the mean distance over the batch's pairs i ≠ j (computed separately for teacher and student), l_δ
    the Huber loss with δ = 1. Shapes [b, ...] each, b ≥ 2. ``reduction="sum"``: the paper's eq. 4, a sum over
    the ordered pairs i ≠ j; ``"mean"``: the authors' code, a mean over all b² entries (the diagonal i = j
    contributes 0), so sum = b² · mean. The paper's weights (25 for classification) go with the mean.
    ψ_D does not change when a network's embeddings are scaled, so neither does the loss.
    """
    check_choice("reduction", reduction, RKD_REDUCTIONS)
    check_same_batch("student_features", student_features, "teacher_features", teacher_features)
    b = student_features.shape[0]
    with torch.no_grad():
        target = _pair_distances(_flat(teacher_features.detach()))
    pairs = 2.0 * _huber(_pair_distances(_flat(student_features)), target).sum()  # (i, j) and (j, i)
    return pairs if reduction == "sum" else pairs / (b * b)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos ∠(e_i, e_j, e_k) = ⟨u_ji, u_jk⟩, u_ji the unit vector from e_j to e_i, for every (j, i, k); [b, b, b].

    Entries with i = j or k = j are 0 (a zero difference normalises to the zero vector)."""
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # u[j, i] = (e_i − e_j) / ‖e_i − e_j‖
    return u @ u.transpose(1, 2)


def rkd_angle_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """RKD-A: Σ_(i,j,k) l_δ(ψ_A(t_i, t_j, t_k), ψ_A(s_i, s_j, s_k)), ψ_A = cos of the angle at t_j; a scalar.

    ψ_A(t_i, t_j, t_k) = ⟨(t_i − t_j)/‖t_i − t_j‖, (t_k − t_j)/‖t_k − t_j‖⟩. Shapes [b, ...] each, b ≥ 2.
    ``reduction="sum"``: the paper's eq. 6 over the triplets of distinct items (the degenerate ones contribute
    0 anyway); ``"mean"``: the authors' code, a mean over all b³ entries, so sum = b³ · mean. The paper's
    weights (50 for classification) go with the mean. Angles are invariant to scale and translation.
    """
    check_choice("reduction", reduction, RKD_REDUCTIONS)
    check_same_batch("student_features", student_features, "teacher_features", teacher_features)
    b = student_features.shape[0]
    with torch.no_grad():
        target = _angles(_flat(teacher_features.detach()))
    total = _huber(_angles(_flat(student_features)), target).sum()
    return total if reduction == "sum" else total / (b * b * b)


def rkd_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0, reduction: str = "mean") -> torch.Tensor:
    """L_RKD = λ_D · RKD-D + λ_A · RKD-A (see ``rkd_distance_loss`` and ``rkd_angle_loss``); a scalar.

    Defaults: the paper's classification weights λ_D = 25, λ_A = 50 (its metric-learning weights are 1 and 2),
    with the mean reduction they were chosen with. Shapes: [b, ...] each (usually the penultimate embeddings).
    """
    check_non_negative("distance_weight", distance_weight)
    check_non_negative("angle_weight", angle_weight)
    return (distance_weight * rkd_distance_loss(student_features, teacher_features, reduction)
            + angle_weight * rkd_angle_loss(student_features, teacher_features, reduction))


# --- PKT -----------------------------------------------------------------------------------------------------


def _cosine_kernel(e: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """K_ij = (cos(e_i, e_j) + 1) / 2 ∈ [0, 1]; ``eps`` > 0 divides by ‖e‖ + eps (the authors' code)."""
    if eps > 0:
        unit = e / (e.norm(dim=1, keepdim=True) + eps)
    else:
        unit = F.normalize(e, dim=1)
    return (unit @ unit.T + 1.0) / 2.0


def pkt_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, variant: str = "paper",
             eps: float = 1e-7) -> torch.Tensor:
    """Passalis & Tefas: KL between the teacher's and the student's conditional similarity distributions.

    With the cosine kernel K(a, b) = (aᵀb / (‖a‖‖b‖) + 1) / 2, item i's distribution over the other items is
    p_{j|i} = K(t_i, t_j) / Σ_{k≠i} K(t_i, t_k) for the teacher (q_{j|i} likewise for the student), and

        ``variant="paper"``:  L = Σ_i Σ_{j≠i} p_{j|i} · log(p_{j|i} / q_{j|i})     (the paper's KL, a sum)

    ``variant="code"`` is the authors' implementation (used by RepDistiller with weight 30000): the features
    are divided by ‖·‖ + eps, the diagonal K_ii = 1 is kept in the normalisation, and the result is the mean
    over all b² entries of p · log((p + eps) / (q + eps)). Shapes [b, ...] each, b ≥ 2 (b ≥ 3 for the paper's
    variant to be informative). ``eps`` is used by the code variant only.
    """
    check_choice("variant", variant, PKT_VARIANTS)
    check_non_negative("eps", eps)
    check_same_batch("student_features", student_features, "teacher_features", teacher_features)
    s, t = _flat(student_features), _flat(teacher_features.detach())
    if variant == "code":
        k_s, k_t = _cosine_kernel(s, eps), _cosine_kernel(t, eps)
        q = k_s / k_s.sum(1, keepdim=True)
        p = k_t / k_t.sum(1, keepdim=True)
        return (p * torch.log((p + eps) / (q + eps))).mean()
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    k_s, k_t = _cosine_kernel(s)[off].view(len(s), -1), _cosine_kernel(t)[off].view(len(t), -1)
    p = k_t / k_t.sum(1, keepdim=True)
    log_q = torch.log(k_s) - torch.log(k_s.sum(1, keepdim=True))
    return (torch.xlogy(p, p) - p * log_q).sum()
