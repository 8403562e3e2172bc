"""FitNets hints (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015).

A regressor r maps the student's *guided* layer v_g to the shape of the teacher's *hint* layer u_h, and the
student (with r) learns to reproduce the hint:

    L_HT = ½ ‖u_h(x) − r(v_g(x))‖²         (the paper's eq. 3, per item; peerlearn averages over the batch)

The paper trains in two stages: (1) the student's layers up to the guided layer, with r, minimise L_HT
alone (the teacher frozen); (2) the whole student is trained with knowledge distillation
(``peerlearn.losses.distillation_loss``), r discarded. That schedule belongs to a recipe; this module gives
the loss and the regressor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from peerlearn.losses._checks import check_choice, check_same_shape

HINT_REDUCTIONS = ("paper", "mean")


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor, reduction: str = "paper") -> torch.Tensor:
    """FitNets' hint loss between the regressed guided layer r(v_g) and the teacher's hint u_h; a scalar.

    Shapes: ``regressed`` and ``hint`` [N, ...], the same shape (a ``HintRegressor`` makes them so). The hint
    is detached: no gradient reaches the teacher.

    * ``reduction="paper"``: ½ Σ_elements (u_h − r(v_g))², summed over each item's elements (eq. 3) and
      averaged over the N items.
    * ``reduction="mean"``: the mean of (u_h − r(v_g))² over every element, as the CRD authors'
      re-implementation (RepDistiller, ``nn.MSELoss``) computes it, where the loss weight is 100. The two
      differ by a constant factor: paper = mean · E / 2, E the number of elements per item.
    """
    check_choice("reduction", reduction, HINT_REDUCTIONS)
    check_same_shape("regressed", regressed, "hint", hint)
    squared = (regressed - hint.detach()) ** 2
    if reduction == "mean":
        return squared.mean()
    return 0.5 * squared.flatten(1).sum(1).mean()


class HintRegressor(nn.Module):
    """FitNets' regressor r: the student's guided layer [N, *student_shape] → [N, *teacher_shape].

    Feature maps (shapes (C, H, W)) get the paper's convolutional regressor: one convolution without padding
    whose kernel is (H_g − H_h + 1) × (W_g − W_h + 1), so its output has the hint's spatial size (the paper's
    way to keep r small); the guided map must be at least as large as the hint. Vectors (shapes (D,)) get a
    fully connected regressor. ``activation="relu"`` follows r with the hint layer's non-linearity (the paper
    gives r the same non-linearity as the hint layer); ``None`` for a hint taken before its activation.
    ``batch_norm=True`` adds a BatchNorm before the activation, as RepDistiller's ``ConvReg`` does (not in the
    paper). Its parameters are trained with the student (an auxiliary module: checkpoint it with the student).
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], activation: Optional[str] = "relu",
                 batch_norm: bool = False):
        super().__init__()
        student_shape, teacher_shape = tuple(int(s) for s in student_shape), tuple(int(s) for s in teacher_shape)
        if activation not in ("relu", None):
            raise ValueError(f"activation must be 'relu' or None, got {activation!r}")
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (1, 3):
            raise ValueError("student_shape and teacher_shape must both be (C, H, W) or both (D,) (without the batch), "
                             f"got {student_shape} and {teacher_shape}")
        if len(student_shape) == 3:
            (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
            if h_s < h_t or w_s < w_t:
                raise ValueError(f"the guided layer's map ({h_s}×{w_s}) must be at least as large as the hint's "
                                 f"({h_t}×{w_t}); guide a shallower student layer or pool the hint")
            self.map = nn.Conv2d(c_s, c_t, kernel_size=(h_s - h_t + 1, w_s - w_t + 1))
            norm = nn.BatchNorm2d(c_t) if batch_norm else nn.Identity()
        else:
            self.map = nn.Linear(student_shape[0], teacher_shape[0])
            norm = nn.BatchNorm1d(teacher_shape[0]) if batch_norm else nn.Identity()
        self.norm = norm
        self.activation = nn.ReLU() if activation == "relu" else nn.Identity()
        self.student_shape, self.teacher_shape = student_shape, teacher_shape

    def forward(self, guided: torch.Tensor) -> torch.Tensor:
        if tuple(guided.shape[1:]) != self.student_shape:
            raise ValueError(f"HintRegressor expects the guided layer [N, {', '.join(map(str, self.student_shape))}], "
                             f"got {list(guided.shape)}")
        return self.activation(self.norm(self.map(guided)))
