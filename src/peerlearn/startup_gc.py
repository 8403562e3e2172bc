"""The cyclic garbage collector during a command's start-up.

A command imports torch (with torch._dynamo, which deterministic mode and every optimizer load), pydantic and
peerlearn's modules, reads the data and builds the networks before its first step: about 300,000 objects that
the collector tracks, allocated in a burst, nearly all alive until the process ends. CPython's collector runs
every 700 net allocations and, every so often, walks *every* tracked object (a full collection): during
start-up it scans them again and again, and during training again every few hundred steps. On this project's
2-core CPU that came to about 0.2 s of start-up and several percent of a short training run
(docs/results.md, whole-run, where a plain PyTorch loop run with and without the same setting shows it).

The command line pauses the collector while a command starts (``pause``) and ``settle`` ends the pause once the
heavy start-up is over (the run is prepared or read back, or the command has finished): ``gc.freeze()`` moves
every object alive at that point into the permanent generation, which later collections do not walk, and
``gc.enable()`` resumes collection of everything allocated afterwards. A library user's process (``import
peerlearn``) is left alone: ``settle`` does nothing unless ``pause`` was called.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Stop automatic collection until ``settle`` (the command line calls it before running a command)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def settle() -> None:
    """End a pause: freeze what start-up allocated (no longer walked by collections), collect again.
    Idempotent; does nothing when ``pause`` did not disable the collector."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
