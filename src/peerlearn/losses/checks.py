"""Argument checks of the public losses: a wrong argument is a ``ValueError`` that names it.

A temperature of 0 gives NaN, a negative one silently flips which class is favoured, and logits of
another batch size broadcast into a wrong value without a word; these checks stop all three at the call.

They read Python numbers and tensor *shapes* only (host-side metadata). No check reads a tensor's values:
``.item()``, ``bool(t > 0)`` or ``torch.isfinite(t).all()`` on a CUDA tensor waits for the device, and
the losses are called every step. A number given as a tensor is the caller's business and is not read.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch


def _number(value, name: str) -> Optional[float]:
    """``value`` as a float, None for a tensor (not read, see the module docstring); else a ValueError."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(value, name: str = "temperature") -> None:
    """``value`` is a finite number > 0 (a temperature T: softmax(z / T) needs T > 0)."""
    number = _number(value, name)
    if number is not None and number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_nonnegative(value, name: str) -> None:
    """``value`` is a finite number ≥ 0 (a loss weight λ)."""
    number = _number(value, name)
    if number is not None and number < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value!r}")


def check_interval(value, name: str, low: float, high: float, open_low: bool = False) -> None:
    """``value`` is a finite number in [low, high] (or (low, high] with ``open_low``)."""
    number = _number(value, name)
    if number is not None and (number < low or number > high or (open_low and number == low)):
        raise ValueError(f"{name} must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value!r}")


def check_choice(value, name: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_matrix(tensor, name: str) -> None:
    """``tensor`` is a 2-D tensor, [N, C] (logits, probabilities) or [N, D] (features)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {list(tensor.shape)}")


def check_same_shape(tensor, name: str, reference: torch.Tensor, reference_name: str) -> None:
    """``tensor`` has the shape of ``reference`` (same items, same classes or feature size)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.shape != reference.shape:
        raise ValueError(f"{name} has shape {list(tensor.shape)}, but {reference_name} has shape "
                         f"{list(reference.shape)}; they must match (same items, same classes)")


def check_labels(labels, logits: torch.Tensor, name: str = "labels", logits_name: str = "logits") -> None:
    """``labels`` is a 1-D integer tensor with one label per row of ``logits``."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{name} must have shape [{logits.shape[0]}] (one per row of {logits_name} "
                         f"{list(logits.shape)}), got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices (−1 = unlabelled), got dtype {labels.dtype}")


def check_all_same_shape(tensors: Sequence[torch.Tensor], name: str, reference: torch.Tensor,
                         reference_name: str) -> None:
    """Every tensor of ``tensors`` has the shape of ``reference``; the first that does not is named."""
    for index, tensor in enumerate(tensors):
        check_same_shape(tensor, f"{name}[{index}]", reference, reference_name)
