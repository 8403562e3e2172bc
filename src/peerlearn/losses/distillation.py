"""Knowledge distillation (Hinton, Vinyals, Dean 2015) and logit matching (Ba & Caruana 2014).

    kl        : L = α · CE(softmax(z), y) + (1 − α) · T² · KL(q ‖ softmax(z / T)),
                q = 1/M · Σ_m softmax(v_m / T)          (M teachers with logits v_m, probabilities averaged)
    logit_mse : L = α · CE(softmax(z), y) + (1 − α) · ½ ‖z − v̄‖²,   v̄ = 1/M · Σ_m v_m

Student logits z are [N, C]; each teacher's logits v_m are [N, C]. Teachers' outputs are constants.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from peerlearn.losses.checks import (check_all_same_shape, check_choice, check_interval, check_labels, check_matrix,
                                     check_positive, check_same_shape)
from peerlearn.losses.classification import cross_entropy
from peerlearn.losses.mimicry import kl_to_target, soft_probs

SOFT_LOSSES = ("kl", "logit_mse")


def _check_teachers(teacher_logits: Sequence[torch.Tensor]) -> None:
    """At least one teacher; every teacher's logits [N, C] of one shape (same items, same classes)."""
    if isinstance(teacher_logits, torch.Tensor) or not teacher_logits:
        raise ValueError("teacher_logits must be a non-empty list of [N, C] tensors, one per teacher")
    check_matrix(teacher_logits[0], "teacher_logits[0]")
    check_all_same_shape(teacher_logits, "teacher_logits", teacher_logits[0], "teacher_logits[0]")


def teacher_probs(teacher_logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Soft targets of one or several teachers: q = 1/M · Σ_m softmax(v_m / T) (detached), [N, C].

    Several teachers are combined by averaging their probabilities at T (Hinton et al.'s ensemble).
    """
    _check_teachers(teacher_logits)
    check_positive(temperature)
    return torch.stack([soft_probs(v, temperature) for v in teacher_logits]).mean(0)


def soft_targets(teacher_logits: Sequence[torch.Tensor], temperature: float = 1.0,
                 soft_loss: str = "kl") -> torch.Tensor:
    """What ``distillation_loss`` compares the student with, from M teachers' logits [N, C] each:
    the mean probability q at T (``soft_loss="kl"``) or the mean logits v̄ (``"logit_mse"``); detached."""
    check_choice(soft_loss, "soft_loss", SOFT_LOSSES)
    if soft_loss == "kl":
        return teacher_probs(teacher_logits, temperature)
    _check_teachers(teacher_logits)
    check_positive(temperature)  # unused by logit matching, but a T ≤ 0 is a mistake all the same
    return torch.stack([v.detach() for v in teacher_logits]).mean(0)


def soft_target_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(q ‖ softmax(z / T)), batch mean; q [N, C] are the teachers' probabilities at T.

    The gradient with respect to the student's logits is T · (softmax(z / T) − q) / N: the T² factor keeps
    its size comparable to that of the hard-label CE whatever T is.
    """
    check_positive(temperature)
    return kl_to_target(target_probs, student_logits, temperature) * temperature**2


def logit_matching(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana: ½ · Σ_i (z_i − v_i)², summed over classes, averaged over the batch; [N, C] each.

    The high-temperature limit of distillation: for zero-mean logits, the gradient of T²·KL tends to
    (z − v) / C as T → ∞ (C classes), i.e. 1/C times the gradient of this loss.
    """
    check_matrix(student_logits, "student_logits")
    check_same_shape(teacher_logits, "teacher_logits", student_logits, "student_logits")
    return 0.5 * ((student_logits - teacher_logits.detach()) ** 2).sum(-1).mean()


class DistillationTerms(NamedTuple):
    """The student's loss and its two parts (``hard`` is None when α = 0)."""

    loss: torch.Tensor
    soft: torch.Tensor
    hard: Optional[torch.Tensor]


def distillation_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    soft_loss: str = "kl",
    hard_loss: Optional[torch.Tensor] = None,
) -> DistillationTerms:
    """``distillation_loss`` with its parts: loss = α · hard + (1 − α) · soft.

    soft = T² · KL(q ‖ softmax(z / T)) for ``soft_loss="kl"`` (``targets`` = q, see ``teacher_probs``) or
    ½ ‖z − v̄‖² for ``"logit_mse"`` (``targets`` = v̄, the mean teacher logits); see ``soft_targets``.
    hard = CE(z, y) over the labelled items, or ``hard_loss`` when given (a hard term computed by the caller,
    e.g. with label smoothing or regularisers). With α = 0 the loss is the soft term alone and no label is
    needed; with α > 0 ``labels`` (or ``hard_loss``) are required.
    """
    check_choice(soft_loss, "soft_loss", SOFT_LOSSES)
    check_interval(alpha, "alpha", 0.0, 1.0)
    check_positive(temperature)
    check_matrix(student_logits, "student_logits")
    check_same_shape(targets, "targets", student_logits, "student_logits")
    if labels is not None:
        check_labels(labels, student_logits, logits_name="student_logits")
    if soft_loss == "kl":
        soft = soft_target_loss(student_logits, targets, temperature)
    else:
        soft = logit_matching(student_logits, targets)
    if alpha == 0:
        return DistillationTerms(soft, soft, None)
    if hard_loss is None:
        if labels is None:
            raise ValueError("distillation_loss with alpha > 0 needs labels (use alpha = 0 on unlabelled data)")
        hard_loss = cross_entropy(student_logits, labels)
    return DistillationTerms(alpha * hard_loss + (1 - alpha) * soft, soft, hard_loss)


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    soft_loss: str = "kl",
    hard_loss: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Hinton et al. 2015: α · CE(z, y) + (1 − α) · T² · KL(q_T ‖ softmax(z / T)); a scalar.

    Shapes: ``student_logits`` z [N, C]; ``targets`` [N, C], the teachers' probabilities at T
    (``teacher_probs([v_1, ..., v_M], T)`` averages several teachers), or their mean logits with
    ``soft_loss="logit_mse"``; ``labels`` [N] (−1 = unlabelled, left out of CE). KL and the soft
    cross-entropy CE(q_T, softmax(z / T)) differ by the teachers' entropy, a constant, so their gradients
    are equal. See ``distillation_terms`` for ``hard_loss`` and the parts.
    """
    return distillation_terms(student_logits, targets, labels, temperature, alpha, soft_loss, hard_loss).loss
