"""Checks of the options of the after-training commands (``evaluate``, ``analyze``, ``report``, ``probe``):
a value out of range is ``ConfigError`` (exit 2) naming the option, before the run is read."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from peerlearn.errors import ConfigError

SPLITS = ("train", "val", "test")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_split(option: str, value: Any, allowed: Sequence[str] = SPLITS) -> None:
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {value!r}.")


def check_count(option: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """An integer ≥ ``minimum`` (None allowed when ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{option} must be an integer of at least {minimum}, got {value!r}.")


def check_positive(option: str, value: Any) -> None:
    """A finite number > 0."""
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{option} must be a finite number above 0, got {value!r}.")


def check_sigmas(option: str, values: Optional[Sequence[Any]]) -> None:
    """Noise levels σ: a non-empty list of finite numbers ≥ 0."""
    if (not isinstance(values, (list, tuple)) or not values
            or not all(_is_number(v) and v >= 0 for v in values)):
        raise ConfigError(f"{option} must be one or more finite noise levels σ ≥ 0, got {values!r}.")


def check_members(option: str, values: Optional[Sequence[Any]]) -> None:
    """None, or a list of member names (strings)."""
    if values is not None and (not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values)):
        raise ConfigError(f"{option} must name members, got {values!r}.")
