"""DIST, distillation from a stronger teacher (Huang, You, Wang, Qian, Xu, NeurIPS 2022).

With Y^S = softmax(Z^S / τ) and Y^T = softmax(Z^T / τ), [B, C] each, and the Pearson distance
d_p(u, v) = 1 − ρ_p(u, v):

    L_inter = τ² / B · Σ_i d_p(Y^S_{i,:}, Y^T_{i,:})      each item's predictions, correlated across classes
    L_intra = τ² / C · Σ_j d_p(Y^S_{:,j}, Y^T_{:,j})      each class's scores, correlated across the batch

    L_DIST = β · L_inter + γ · L_intra,   paper defaults β = γ = 1, τ = 1 (added to the cross-entropy with
    weight α = 1).

Only relations are matched: ρ_p is invariant to shifting and positively scaling either argument.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from peerlearn.losses._checks import check_logits, check_non_negative, check_positive


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """ρ(a, b) = ⟨a − ā, b − b̄⟩ / (‖a − ā‖ · ‖b − b̄‖ + eps) along ``dim``; same-shaped inputs, ``dim`` reduced.

    ``eps`` (as in the authors' code) keeps a constant vector (zero variance, ρ undefined) at ρ = 0."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


class DISTTerms(NamedTuple):
    """β · inter + γ · intra and its two parts (each with its τ² factor)."""

    loss: torch.Tensor
    inter: torch.Tensor
    intra: torch.Tensor


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
               temperature: float = 1.0, eps: float = 1e-8) -> DISTTerms:
    """DIST's inter- and intra-class relation losses and their weighted sum; see the module docstring.

    Shapes: [B, C] logits each (B ≥ 2 and C ≥ 2 for the correlations to exist); the teacher's are detached.
    Paper and the authors' current code agree (the τ² factors included); ``eps`` is the code's guard against
    a zero variance, negligible otherwise.
    """
    check_logits(student_logits, teacher_logits)
    check_non_negative("beta", beta)
    check_non_negative("gamma", gamma)
    check_positive("temperature", temperature)
    check_non_negative("eps", eps)
    y_s = torch.softmax(student_logits / temperature, dim=1)
    y_t = torch.softmax(teacher_logits.detach() / temperature, dim=1)
    scale = temperature**2
    inter = scale * (1.0 - pearson_correlation(y_s, y_t, dim=1, eps=eps)).mean()
    intra = scale * (1.0 - pearson_correlation(y_s, y_t, dim=0, eps=eps)).mean()
    return DISTTerms(beta * inter + gamma * intra, inter, intra)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> torch.Tensor:
    """L_DIST = β · τ²/B Σ_i (1 − ρ(Y^S_i, Y^T_i)) + γ · τ²/C Σ_j (1 − ρ(Y^S_:j, Y^T_:j)); a scalar.

    Y = softmax(Z / τ) of [B, C] logits; see ``dist_terms`` for the parts."""
    return dist_terms(student_logits, teacher_logits, beta, gamma, temperature).loss
