"""Temporal means and ramp-ups: the exponential moving average of a network's weights (PCL's peer mean
teacher, the "mean teacher" of Tarvainen & Valpola 2017) and the sigmoid ramp-up of a loss weight (used by
the ONE and OKDDip code and by PCL)."""

from __future__ import annotations

import math

import torch
from torch import nn

BUFFER_MODES = ("copy", "average", "keep")


def _check_decay(decay: float) -> None:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float, buffers: str = "copy") -> None:
    """θ'_t = δ · θ'_{t−1} + (1 − δ) · θ_t for every parameter of ``ema_model`` (in place, no graph).

    ``ema_model`` is a copy of ``model`` (e.g. ``copy.deepcopy(model)`` with ``requires_grad_(False)``):
    the two must have the same parameter and buffer names and shapes, or a ValueError names the first
    difference. ``decay`` δ ∈ [0, 1) (PCL: 0.999; δ = 0 copies). Buffers (BatchNorm's running statistics,
    counters):
      "copy"    take the model's values (the default: running statistics are already averages);
      "average" floating-point buffers get the same moving average, the others are copied;
      "keep"    left alone (when the averaged network updates its own statistics in its forward passes).
    """
    _check_decay(decay)
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    ema_params, params = dict(ema_model.named_parameters()), dict(model.named_parameters())
    _check_same(ema_params, params, "parameter")
    _moving_average(list(ema_params.values()), [params[name] for name in ema_params], decay)
    if buffers == "keep":
        return
    ema_buffers, model_buffers = dict(ema_model.named_buffers()), dict(model.named_buffers())
    _check_same(ema_buffers, model_buffers, "buffer")
    averaged, copied = [], []
    for name, buffer in ema_buffers.items():
        (averaged if buffers == "average" and buffer.is_floating_point() else copied).append(name)
    _moving_average([ema_buffers[n] for n in averaged], [model_buffers[n] for n in averaged], decay)
    if copied:
        torch._foreach_copy_([ema_buffers[n] for n in copied], [model_buffers[n] for n in copied])


def _moving_average(averages: list[torch.Tensor], values: list[torch.Tensor], decay: float) -> None:
    """a ← δ · a + (1 − δ) · v for every pair, in one multi-tensor operation per device and dtype group
    (``torch._foreach_lerp_``, as torch.optim's EMA helpers use: a + (1 − δ) · (v − a))."""
    if averages:
        torch._foreach_lerp_(averages, values, 1.0 - decay)


def _check_same(ema: dict[str, torch.Tensor], model: dict[str, torch.Tensor], kind: str) -> None:
    if ema.keys() != model.keys():
        missing = sorted(set(model) - set(ema)) or sorted(set(ema) - set(model))
        raise ValueError(f"ema_model and model differ: {kind} {missing[0]!r} is in only one of them")
    for name, tensor in ema.items():
        if tensor.shape != model[name].shape:
            raise ValueError(f"ema_model and model differ: {kind} {name!r} has shape {tuple(tensor.shape)} "
                             f"vs {tuple(model[name].shape)}")


def ema_decay(step: int, decay: float = 0.999) -> float:
    """The mean teacher's warm-up of the decay: min(δ, 1 − 1/(step + 1)) at optimiser step ``step`` ≥ 0,
    so the first updates follow the network closely (a plain average of the steps so far) instead of
    keeping its random start for thousands of steps."""
    _check_decay(decay)
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    return min(decay, 1.0 - 1.0 / (step + 1))


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(−5 · (1 − t)²) with t = clip(current / length, 0, 1) (Laine & Aila 2017); 1 when ``length`` = 0.

    Rises smoothly from exp(−5) ≈ 0.0067 at ``current`` = 0 to 1 at ``current`` ≥ ``length`` (epochs or
    steps, as long as both use the same unit). The ONE and OKDDip code weight their KL terms with it
    (length 80 epochs).
    """
    if length < 0:
        raise ValueError(f"length must be ≥ 0, got {length}")
    if length == 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
