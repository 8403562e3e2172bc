"""Argument checks shared by the feature and relational losses.

Only Python numbers are checked (a tensor argument, e.g. a scheduled weight, passes as it is): checking a
tensor's value would need ``.item()``, a device synchronisation on every call. Shapes are read from the
tensors' metadata, which costs nothing.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import torch


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_number(name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        return
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive(name: str, value) -> None:
    check_number(name, value)
    if not isinstance(value, torch.Tensor) and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_non_negative(name: str, value) -> None:
    check_number(name, value)
    if not isinstance(value, torch.Tensor) and value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value!r}")


def check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {list(a.shape)} and {list(b.shape)}")


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, minimum: int = 2) -> None:
    """Two batches of features of the same N items (their widths may differ), N ≥ ``minimum``."""
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"{name_a} and {name_b} must be batches [N, ...] of at least 2 dimensions, "
                         f"got {list(a.shape)} and {list(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must hold the same number of items, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < minimum:
        raise ValueError(f"{name_a} needs at least {minimum} items in the batch, got {a.shape[0]}")


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be [N, C], got {list(student_logits.shape)}")
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)


def as_layers(name: str, value) -> list[torch.Tensor]:
    """One tensor, or a sequence of tensors (one per layer), as a list."""
    if isinstance(value, torch.Tensor):
        return [value]
    layers = list(value)
    if not layers or not all(isinstance(v, torch.Tensor) for v in layers):
        raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return layers


def layer_pairs(student_features, teacher_features) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (student, teacher) tensors of each layer pair: one tensor each, or two sequences of the same length."""
    students = as_layers("student_features", student_features)
    teachers = as_layers("teacher_features", teacher_features)
    if len(students) != len(teachers):
        raise ValueError(f"student_features and teacher_features must list the same number of layers, "
                         f"got {len(students)} and {len(teachers)}")
    return list(zip(students, teachers))
