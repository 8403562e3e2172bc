"""Progress bars for work that takes more than a few seconds, silent when nobody is watching.

``mode`` is the ``train.progress`` setting: ``on``, ``off`` or ``auto`` (a bar only when standard
error is a terminal, so logs, pipes and CI output stay clean). What a person reads off a terminal is the
per-epoch line that training logs either way (``peerlearn.engine.epoch_log``, logger ``peerlearn``).
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional, Union

from tqdm.auto import tqdm

Mode = Union[str, bool, None]


def progress_enabled(mode: Mode = "auto") -> bool:
    """True for ``on``/True, False for ``off``/False, and for ``auto``/None: is stderr a terminal?"""
    if isinstance(mode, bool):
        return mode
    if mode in ("on", "off"):
        return mode == "on"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 mode: Mode = "auto", leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled unless ``progress_enabled(mode)``."""
    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(mode), leave=leave,
                dynamic_ncols=True, file=sys.stderr, **kwargs)
