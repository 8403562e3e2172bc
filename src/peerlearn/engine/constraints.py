"""Weight constraints applied after an optimizer step.

Max-norm (Hinton et al. 2012, Srivastava et al. 2014): the incoming weight vector w_u of every unit u
(a row of a Linear weight, one output filter of a convolution) is kept inside a ball of radius c:

    w_u ← w_u · min(1, c / ‖w_u‖₂)

It bounds the weights without shrinking those that are already inside the ball, which lets dropout
nets use large learning rates.
"""

from __future__ import annotations

import torch
from torch import nn

CONSTRAINED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Project every unit's incoming weight vector (Linear / Conv weights) onto ‖w_u‖₂ ≤ ``max_norm``."""
    for module in model.modules():
        if isinstance(module, CONSTRAINED):
            weight = module.weight
            norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
            scale = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
            weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
