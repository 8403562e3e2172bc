"""Decoupled knowledge distillation, DKD (Zhao, Cui, Song, Qiu, Liang, CVPR 2022).

For an item of class t and logits z at temperature T, p = softmax(z / T). DKD splits KD into

    b = [p_t, 1 − p_t]                                  binary: the target class against all others
    p̂_i = p_i / (1 − p_t) = softmax_{i≠t}(z_i / T)      the distribution among the non-target classes

    TCKD = KL(b^T ‖ b^S),   NCKD = KL(p̂^T ‖ p̂^S),   and the paper's identity  KD = TCKD + (1 − p_t^T) · NCKD

and weighs the two parts independently: DKD = α · TCKD + β · NCKD. The paper's CIFAR-100 defaults: α = 1,
β = 8, T = 4, with the loss ramped in linearly over the first 20 epochs (``dkd_warmup``) and added to the
cross-entropy with weight 1 (its ImageNet settings: T = 1, β = 0.5 or 2 by pair of networks, 1 warm-up epoch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from peerlearn.losses._checks import check_logits, check_non_negative, check_positive


class DKDTerms(NamedTuple):
    """The loss α · TCKD + β · NCKD and its two parts (each already multiplied by T² when ``t_squared``)."""

    loss: torch.Tensor
    tckd: torch.Tensor
    nckd: torch.Tensor


def _parts(logits: torch.Tensor, target: torch.Tensor):
    """log p_t, log(1 − p_t) [N] and the non-target log-probabilities log p̂ [N, C] (0 at the target column)."""
    log_norm = torch.logsumexp(logits, 1)
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target[:, None], True)
    others = logits.masked_fill(is_target, float("-inf"))
    log_norm_others = torch.logsumexp(others, 1)
    log_pt = logits.gather(1, target[:, None]).squeeze(1) - log_norm
    log_not_pt = log_norm_others - log_norm
    log_hat = (logits - log_norm_others[:, None]).masked_fill(is_target, 0.0)
    return log_pt, log_not_pt, log_hat, is_target


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
              beta: float = 8.0, temperature: float = 4.0, t_squared: bool = True) -> DKDTerms:
    """α · TCKD + β · NCKD with its parts, averaged over the labelled items; see the module docstring.

    Shapes: ``student_logits`` and ``teacher_logits`` [N, C] (C ≥ 2), ``labels`` [N] int64 (−1 = unlabelled:
    left out; with no labelled item the loss is 0). The teacher's logits are detached.

    ``t_squared=True`` multiplies both parts by T², as the authors' code does (and as Hinton's KD does, so that
    the gradient's size does not shrink like 1/T²); the paper writes its equations without it, at T = 1 where
    the two readings agree. Its weights α = 1, β = 8 were chosen with the factor. The non-target distribution
    is computed exactly (the code approximates it by subtracting 1000 from the target logit at T).
    """
    check_logits(student_logits, teacher_logits)
    if student_logits.shape[1] < 2:
        raise ValueError(f"DKD needs at least 2 classes, got {student_logits.shape[1]}")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be [N] = [{student_logits.shape[0]}], got {list(labels.shape)}")
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_positive("temperature", temperature)
    labelled = labels >= 0
    target = labels.clamp_min(0)
    s_pt, s_not, s_hat, is_target = _parts(student_logits / temperature, target)
    with torch.no_grad():
        t_pt, t_not, t_hat, _ = _parts(teacher_logits.detach() / temperature, target)
    # Every log-probability here is finite for finite logits (log-sum-exp), so the KLs need no clamping.
    tckd_rows = t_pt.exp() * (t_pt - s_pt) + t_not.exp() * (t_not - s_not)
    t_hat_p = t_hat.exp().masked_fill(is_target, 0.0)
    nckd_rows = (t_hat_p * (t_hat - s_hat)).sum(1)
    weight = labelled.to(student_logits.dtype)
    count = weight.sum().clamp_min(1.0)
    scale = temperature**2 if t_squared else 1.0
    tckd = (tckd_rows * weight).sum() / count * scale
    nckd = (nckd_rows * weight).sum() / count * scale
    return DKDTerms(alpha * tckd + beta * nckd, tckd, nckd)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0, t_squared: bool = True) -> torch.Tensor:
    """DKD = T² · (α · KL(b^T ‖ b^S) + β · KL(p̂^T ‖ p̂^S)), batch mean over labelled items; a scalar.

    [N, C] logits each, labels [N]; see ``dkd_terms`` for the parts, the T² factor and the defaults.
    """
    return dkd_terms(student_logits, teacher_logits, labels, alpha, beta, temperature, t_squared).loss


def dkd_warmup(epoch: float, warmup_epochs: float = 20.0) -> float:
    """The factor min(epoch / warmup_epochs, 1) by which DKD's loss is ramped in (epochs counted from 1, as in
    the authors' code: the first epoch uses 1/20); ``warmup_epochs=0`` gives 1."""
    check_non_negative("epoch", epoch)
    check_non_negative("warmup_epochs", warmup_epochs)
    return 1.0 if warmup_epochs == 0 else min(epoch / warmup_epochs, 1.0)
