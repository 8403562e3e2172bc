"""Stopping cleanly on SIGTERM and SIGINT: a checkpoint at the next step boundary, then exit.

Schedulers send SIGTERM before they take a machine; Ctrl-C sends SIGINT. While the trainer runs,
both only set a flag (``StopSignals``); the trainer looks at it after every optimisation step and
after every epoch's checkpoint. When it is set, the trainer writes a checkpoint of exactly that
position (mid-epoch checkpoints resume bit for bit, see docs/reliability.md) and raises ``Preempted``,
which the CLI reports with the run directory and the command that resumes it, exiting with
128 + the signal number (130 for SIGINT, 143 for SIGTERM).

A second signal does not wait: it stops at once (the last checkpoint on disk stays intact). In a
distributed run the flag is combined over all processes (an all-reduce of one number per step),
so every process stops at the same step and the checkpoint is written collectively.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import torch

from peerlearn.errors import Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Handlers for SIGTERM/SIGINT that record the first signal; the second raises KeyboardInterrupt."""

    def __init__(self):
        self.received: Optional[int] = None
        self.second: Optional[int] = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            self.second = signum
            raise KeyboardInterrupt  # second signal: stop now
        self.received = signum


def requested_signal(trainer) -> Optional[int]:
    """The stop signal that arrived (in any process of a distributed run), else None."""
    signals = getattr(trainer, "signals", None)
    received = signals.received if signals is not None else None
    context = getattr(trainer, "distributed", None)
    if context is None:
        return received
    import torch.distributed as dist

    flag = torch.tensor([received or 0], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def resume_hint(run_dir) -> str:
    return f"run directory: {run_dir}\nresume with: peerlearn train --resume {run_dir}"


def preempted(trainer, signum: int, saved: bool) -> Preempted:
    """The error that ends a run stopped by ``signum``; ``saved``: a checkpoint of this position was written."""
    name = signal.Signals(signum).name
    if not trainer.is_main:  # the main process reports the run directory and the resume command
        return Preempted(f"rank {trainer.distributed.rank} stopped by {name} with the others at global step "
                         f"{trainer.position.global_step}.", signum)
    if saved:
        state = (f"at global step {trainer.position.global_step}; its checkpoint is saved: "
                 f"{str(trainer.checkpoint_path)!r}")
    else:
        state = f"at once (a second signal) at {trainer.where()}; the last good checkpoint is " \
                f"{trainer.last_good_checkpoint()}"
    return Preempted(f"Stopped by {name} {state}.\n{resume_hint(trainer.run_dir)}", signum)
