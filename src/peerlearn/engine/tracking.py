"""Where a run's numbers go: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from peerlearn.engine.checkpoint import atomic_write


class MetricsLog:
    """Append-only JSON-lines log plus optional TensorBoard scalars.

    On resume, lines written after the checkpoint's step are dropped, so the log reads as if the
    run had never stopped.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if (record := _parse(line)) is not None and record.get("step", 0) <= resume_step]
            # atomically: a process killed during this rewrite must not lose the log
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
        self.handle = open(self.path, "a", buffering=1)
        self.writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
        self.extra_loggers: list[Any] = []

    def log(self, kind: str, step: int, epoch: float, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, "epoch": epoch, **values}
        self.handle.write(json.dumps(record) + "\n")
        scalars = dict(_flat(values))
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        for logger in self.extra_loggers:
            logger.log(kind, step, scalars)

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
        for logger in self.extra_loggers:
            logger.close()


def _parse(line: str) -> Optional[dict[str, Any]]:
    """One log line, or None for a blank or torn line (the process was killed while writing it)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _flat(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, name + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [record for line in path.read_text().splitlines() if (record := _parse(line)) is not None]
