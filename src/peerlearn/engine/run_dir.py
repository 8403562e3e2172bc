"""Run directories: created fresh for every run, never overwritten."""

from __future__ import annotations

import os
import time
from pathlib import Path

from peerlearn.errors import PeerlearnError


def create_run_dir(out: Path, name: str) -> Path:
    """Make ``out/<name>-<YYYYmmdd-HHMMSS>`` (with -2, -3, ... if taken); fail early if unwritable."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PeerlearnError(f"Cannot create the output directory {str(out)!r}: {error.strerror}. "
                             "Choose another with --out.") from None
    if not os.access(out, os.W_OK):
        raise PeerlearnError(f"The output directory {str(out)!r} is not writable. Choose another with --out.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{name}-{stamp}"
    candidate, suffix = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = Path(f"{base}-{suffix}")
