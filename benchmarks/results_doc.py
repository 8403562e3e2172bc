"""Shared helpers of the benchmark scripts: hardware line, mean ± std, and writing a section of
docs/results.md in place (between ``<!-- BEGIN name -->`` and ``<!-- END name -->``), so each script
owns its section and re-running it replaces its numbers."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
HEADER = ("# Results\n\nEvery number here was written by a script in `benchmarks/`; the command that produced "
          "each section is given with it. Nothing is typed in by hand.\n")


def use_shared_data() -> None:
    """Point PEERLEARN_DATA at the checkout's sibling ``shared/data`` when it is not set and exists."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if "PEERLEARN_DATA" not in os.environ and shared.is_dir():
        os.environ["PEERLEARN_DATA"] = str(shared)


use_shared_data()


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = f"{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{device}, Python {platform.python_version()}")


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], RESULTS.parents[1])] + sys.argv[1:])


def write_section(name: str, body: str) -> None:
    """Replace (or append) section ``name`` of docs/results.md with ``body`` plus provenance."""
    stamp = time.strftime("%Y-%m-%d")
    block = (f"<!-- BEGIN {name} -->\n{body.rstrip()}\n\n"
             f"*Command:* `{command_line()}` · *hardware:* {hardware()} · *date:* {stamp}\n<!-- END {name} -->")
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
