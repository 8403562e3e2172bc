"""Checks of the after-training commands' options (evaluate, analyze, probe, report, export).

Each is run before a run is read, so a wrong option costs nothing and writes nothing: a ``ConfigError``
(exit 2) that names the option as typed on the command line, the value and what is allowed. NaN and
infinities are refused wherever a number is expected (argparse's ``float`` accepts ``nan``, ``inf`` and
``1e999``).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

from peerlearn.errors import ConfigError

SPLITS = ("train", "val", "test")


def flag(name: str) -> str:
    """``tsne_items`` -> ``--tsne-items`` (the option as typed)."""
    return "--" + name.replace("_", "-")


def integer_at_least(value, name: str, low: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{flag(name)} must be an integer ≥ {low}, got {value!r}.")
    return int(value)


def finite_number(value, name: str, low: float = -math.inf, high: float = math.inf,
                  open_low: bool = False) -> float:
    """A finite number in [low, high] ((low, high] with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{flag(name)} must be a finite number, got {value!r}.")
    if value < low or value > high or (open_low and value == low):
        bounds = f"{'>' if open_low else '≥'} {low:g}" + (f" and ≤ {high:g}" if high < math.inf else "")
        raise ConfigError(f"{flag(name)} must be {bounds}, got {value!r}.")
    return float(value)


def finite_numbers(values: Sequence, name: str, low: float = 0.0) -> list[float]:
    """A non-empty list of finite numbers ≥ ``low`` (noise levels σ)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"{flag(name)} needs at least one number, got {values!r}.")
    return [finite_number(v, name, low) for v in values]


def choice(value, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {value!r}.")
    return value


def member_names(values, name: str = "member") -> Optional[list[str]]:
    """Member names as given (None: all); each must be a non-empty string (the run checks it exists)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{flag(name)} must name a member, got {value!r}.")
    return list(values)
