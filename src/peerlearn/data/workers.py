"""DataLoader worker processes that end with the process that started them.

A training process killed with SIGKILL cannot stop its DataLoader workers; PyTorch's own check of the parent
runs only between batches (every few seconds when idle), and until the last worker notices, the workers can
hold what they inherited with ``fork``: the run directory's lock (``engine.run_dir.RunLock``) among them,
so that ``--resume`` was refused for as long as they lived. Two guards, each enough on its own:

* the lock's descriptor is closed in every forked child (``RunLock``, with ``os.register_at_fork``), so a
  worker never holds the run's lock at all;
* each worker asks Linux to send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks
  that the parent is still the one that started it (it may have died before the request was made).

Elsewhere (macOS, Windows) only the first guard and PyTorch's own check apply.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from peerlearn import startup_gc

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent ends (Linux); True when it was arranged."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TiedToParent:
    """A DataLoader ``worker_init_fn``: the worker dies with the process that built the loader.

    Made in the parent (it records the parent's pid), pickled to the workers when they are spawned."""

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        die_with_parent()
        if os.getppid() != self.parent:  # the parent is already gone: nobody would ever read this worker
            os._exit(0)
        startup_gc.settle()  # forked while the command line held the collector: this worker collects


def worker_options(workers: int) -> dict:
    """The DataLoader keyword arguments that tie its workers to this process (none without workers)."""
    return {"worker_init_fn": TiedToParent()} if workers > 0 else {}
