"""Contrastive representation distillation, CRD (Tian, Krishnan, Isola, ICLR 2020).

Linear heads map the student's and the teacher's features to unit vectors g_S(s), g_T(t) ∈ R^D. A critic

    h(t, s) = exp(g_T(t)ᵀ g_S(s) / τ) / (exp(g_T(t)ᵀ g_S(s) / τ) + K / M)

(τ the temperature, K negatives per item, M the size of the training set) tells the pair of one item (a
positive) from pairs of different items (negatives), and the student minimises the NCE loss

    L_CRD = −1/N · Σ_n [ log h(t_n, s_n) + Σ_{k=1..K} log(1 − h(t_n, s_{n,k}^−)) ]

The negatives' embeddings come from memory banks, one per network, holding one unit vector per training item
(M × D floats each, so the two banks take 2 · M · D · 4 bytes in float32: 51.2 MB for CIFAR-100's 50,000
items at D = 128), updated after each step by m_i ← normalise(μ · m_i + (1 − μ) · v_i). Paper defaults:
D = 128, K = 16384, τ = 0.07 (the released code's default), μ = 0.5, loss weight β = 0.8.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.losses._checks import check_choice, check_positive

CRD_VARIANTS = ("paper", "code")


def nce_critic_loss(positive_scores: torch.Tensor, negative_scores: torch.Tensor, temperature: float,
                    num_data: int, log_normalizer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CRD's NCE loss from the critic's scores; a scalar.

    ``positive_scores`` [N]: gᵀg' of each item's own pair; ``negative_scores`` [N, K]: of its K negatives.
    With e(u) = exp(u / τ) and the noise term K / M (M = ``num_data``):

        h(u) = e(u) / (e(u) + K / M),   L = −1/N · Σ_n [ log h(u_n⁺) + Σ_k log(1 − h(u_nk⁻)) ]

    ``log_normalizer`` log Z replaces e(u) by e(u) / Z, the authors' code's normalisation (Z estimated once
    from the first batch as M times the mean of e(u) over its scores); None for the paper's critic. Computed
    in log space (log h = u/τ − logaddexp(u/τ, log(K/M))), so it stays finite at τ = 0.07; the code's 10⁻⁷
    added to the denominators is therefore not needed and left out.
    """
    check_positive("temperature", temperature)
    check_positive("num_data", num_data)
    if positive_scores.dim() != 1 or negative_scores.dim() != 2 or negative_scores.shape[0] != positive_scores.shape[0]:
        raise ValueError(f"positive_scores must be [N] and negative_scores [N, K], got {list(positive_scores.shape)} "
                         f"and {list(negative_scores.shape)}")
    log_noise = math.log(negative_scores.shape[1] / num_data)
    pos, neg = positive_scores / temperature, negative_scores / temperature
    if log_normalizer is not None:
        pos, neg = pos - log_normalizer, neg - log_normalizer
    log_h_pos = pos - torch.logaddexp(pos, torch.full_like(pos, log_noise))
    log_one_minus_h_neg = log_noise - torch.logaddexp(neg, torch.full_like(neg, log_noise))
    return -(log_h_pos + log_one_minus_h_neg.sum(1)).mean()


class EmbeddingHead(nn.Module):
    """g(x) = W·x + b, normalised to unit length: [N, ...] (flattened) → [N, D]. CRD's embedding head."""

    def __init__(self, in_features: int, out_features: int = 128):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(features.flatten(1)), dim=1)


class CRDLoss(nn.Module):
    """CRD with its embedding heads and its two memory banks (buffers, so they are saved in ``state_dict``).

    ``CRDLoss(student_dim, teacher_dim, num_data)`` then ``loss = crd(f_s, f_t, indices)``: ``f_s`` [N, ...]
    and ``f_t`` [N, ...] the student's and the teacher's features (flattened to ``student_dim`` and
    ``teacher_dim``), ``indices`` [N] int64 the items' positions in the training set (0 ≤ i < ``num_data``);
    ``negatives`` [N, K], optional, the negatives' indices (for class-aware sampling; drawn uniformly
    otherwise). Returns the sum of the two symmetric NCE terms (``nce_critic_loss``): the teacher's embedding as
    anchor against the student bank, and the student's against the teacher bank. In training mode, after the
    loss is computed, each item's bank rows move towards its new embeddings (momentum ``momentum``) and are
    renormalised. The teacher's features are detached; the teacher head is trained (it is part of the critic).

    ``variant="paper"``: the positive pair is the current embeddings (g_T(t_n), g_S(s_n)); negatives are drawn
    uniformly among the *other* items; h as in the paper. ``variant="code"`` follows the authors' released code:
    the positive is the bank's row of the item itself, negatives are drawn among all items (the item may be
    drawn as its own negative), and e(u) is divided by the constant Z fixed on the first call (kept in the
    buffer ``log_normalizer``). Banks start as random unit vectors (the code draws uniform entries of norm ≈ 1).

    Memory: ``bank_bytes()`` = 2 · num_data · feature_dim · element size (two banks, one per network).
    """

    def __init__(self, student_dim: int, teacher_dim: int, num_data: int, feature_dim: int = 128,
                 num_negatives: int = 16384, temperature: float = 0.07, momentum: float = 0.5,
                 variant: str = "paper"):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("num_data", num_data),
                            ("feature_dim", feature_dim), ("num_negatives", num_negatives)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_data < 2:
            raise ValueError(f"num_data must be at least 2 (an item needs other items as negatives), got {num_data}")
        check_positive("temperature", temperature)
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        check_choice("variant", variant, CRD_VARIANTS)
        self.num_data, self.feature_dim, self.num_negatives = num_data, feature_dim, num_negatives
        self.temperature, self.momentum, self.variant = float(temperature), float(momentum), variant
        self.embed_student = EmbeddingHead(student_dim, feature_dim)
        self.embed_teacher = EmbeddingHead(teacher_dim, feature_dim)
        self.register_buffer("student_bank", F.normalize(torch.randn(num_data, feature_dim), dim=1))
        self.register_buffer("teacher_bank", F.normalize(torch.randn(num_data, feature_dim), dim=1))
        # log Z of the teacher-anchored and the student-anchored terms (code variant), and whether each is fixed
        # yet (a flag, not a NaN sentinel: a run's weights must stay finite to be checkpointed)
        self.register_buffer("log_normalizer", torch.zeros(2))
        self.register_buffer("normalizer_fixed", torch.zeros(2, dtype=torch.bool))

    def bank_bytes(self) -> int:
        """Bytes held by the two memory banks: 2 · num_data · feature_dim · element size."""
        return sum(bank.numel() * bank.element_size() for bank in (self.student_bank, self.teacher_bank))

    def sample_negatives(self, indices: torch.Tensor) -> torch.Tensor:
        """K indices per item, uniform; with ``variant="paper"`` never the item itself. [N] → [N, K]."""
        n, k = indices.shape[0], self.num_negatives
        if self.variant == "code":
            return torch.randint(self.num_data, (n, k), device=indices.device)
        drawn = torch.randint(self.num_data - 1, (n, k), device=indices.device)
        return drawn + (drawn >= indices[:, None]).long()  # skip the item's own index

    def negative_scores(self, anchor: torch.Tensor, bank: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """anchor_n · bank[negatives[n, k]] for every item and negative: [N, D], [M, D], [N, K] → [N, K].

        Gathering the rows takes N·K·D floats (537 MB for N = 64, K = 16384, D = 128); scoring the whole bank
        and picking the columns takes N·M (13 MB for M = 50,000). The cheaper one is used (same values)."""
        if bank.shape[0] <= negatives.shape[1] * bank.shape[1]:
            return (anchor @ bank.T).gather(1, negatives)
        return torch.einsum("nd,nkd->nk", anchor, bank[negatives])

    def _term(self, anchor: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor, negatives: torch.Tensor,
              slot: int) -> torch.Tensor:
        pos = (anchor * positive).sum(1)
        neg = self.negative_scores(anchor, bank, negatives)
        log_z = None
        if self.variant == "code":
            # Z is fixed once, from the first batch: M times the mean of e(u) over its scores. Branch-free (no
            # device synchronisation): the estimate is kept where the flag says Z is not fixed yet.
            with torch.no_grad():
                scores = torch.cat([pos[:, None], neg], 1).flatten() / self.temperature
                estimate = torch.logsumexp(scores, 0) - math.log(scores.numel()) + math.log(self.num_data)
                current = self.log_normalizer[slot]
                self.log_normalizer[slot] = torch.where(self.normalizer_fixed[slot], current, estimate)
                self.normalizer_fixed[slot] = True
            log_z = self.log_normalizer[slot].clone()
        return nce_critic_loss(pos, neg, self.temperature, self.num_data, log_z)

    @torch.no_grad()
    def update_banks(self, indices: torch.Tensor, student_embedding: torch.Tensor,
                     teacher_embedding: torch.Tensor) -> None:
        """m_i ← normalise(μ · m_i + (1 − μ) · v_i) in both banks, for the batch's items.

        The banks are replaced, not written in place: this step's loss still needs the old ones for its backward."""
        for name, v in (("student_bank", student_embedding), ("teacher_bank", teacher_embedding)):
            bank = getattr(self, name)
            moved = self.momentum * bank[indices] + (1.0 - self.momentum) * v.detach().to(bank.dtype)
            setattr(self, name, bank.index_copy(0, indices, F.normalize(moved, dim=1)))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor, indices: torch.Tensor,
                negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        if student_features.shape[0] != teacher_features.shape[0] or indices.shape != (student_features.shape[0],):
            raise ValueError(f"student_features, teacher_features and indices must hold the same N items, got "
                             f"{list(student_features.shape)}, {list(teacher_features.shape)} and "
                             f"{list(indices.shape)}")
        if indices.dtype != torch.long:
            raise ValueError(f"indices must be int64 positions in the training set, got {indices.dtype}")
        if negatives is None:
            negatives = self.sample_negatives(indices)
        elif negatives.dim() != 2 or negatives.shape[0] != indices.shape[0]:
            raise ValueError(f"negatives must be [N, K] indices, got {list(negatives.shape)}")
        s = self.embed_student(student_features)
        t = self.embed_teacher(teacher_features.detach())
        if self.variant == "paper":
            positive_for_teacher, positive_for_student = s, t
        else:  # the code scores each anchor against the other network's bank row of the same item
            positive_for_teacher, positive_for_student = self.student_bank[indices], self.teacher_bank[indices]
        loss = (self._term(t, positive_for_teacher, self.student_bank, negatives, 0)
                + self._term(s, positive_for_student, self.teacher_bank, negatives, 1))
        if self.training:
            self.update_banks(indices, s, t)
        return loss
