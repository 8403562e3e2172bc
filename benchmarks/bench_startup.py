"""Start-up time of the command line against ``import torch``.

    python benchmarks/bench_startup.py            # 9 interleaved rounds
    python benchmarks/bench_startup.py --quick    # 3 rounds, marked as not a result

Writes section ``startup`` of docs/results.md. Each command runs as a fresh process (this checkout's ``src``
first on the path), the commands interleaved round by round so that load from other jobs hits them alike;
the table gives the median wall time and its ratio to ``python -c "import torch"``. The goal is that
``peerlearn --help`` and ``peerlearn COMMAND --help`` take at most 1.1× ``import torch``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_doc import markdown_table, write_section

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = {
    "python -c 'import torch'": ["-c", "import torch"],
    "python -c 'pass'": ["-c", "pass"],
    "peerlearn --help": ["-m", "peerlearn", "--help"],
    "peerlearn train --help": ["-m", "peerlearn", "train", "--help"],
    "peerlearn export --help": ["-m", "peerlearn", "export", "--help"],
    "python -c 'import peerlearn'": ["-c", "import peerlearn"],
    "peerlearn config (validates the defaults)": ["-m", "peerlearn", "config"],
}


def seconds(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds, to check the script end to end")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    for command in COMMANDS.values():  # warm the file cache
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    torch_median = statistics.median(times["python -c 'import torch'"])
    rows = [[f"`{name}`", f"{1000 * statistics.median(t):.0f}", f"{1000 * (max(t) - min(t)) / 2:.0f}",
             f"{statistics.median(t) / torch_median:.2f}×"] for name, t in times.items()]
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    body = (f"## Start-up{tag}\n\nWall time of fresh processes, median over {rounds} interleaved rounds (± half the "
            "range); the machine may be shared with other jobs (not controlled). `peerlearn` = `python -m peerlearn` with this checkout "
            "first on the path. The help of every command is built without torch, pydantic or the recipes "
            "(`import peerlearn` imports its public names on first use); commands that read a config pay for "
            "them when they run.\n\n"
            + markdown_table(["command", "median ms", "± ms", "vs import torch"], rows))
    print(body)
    write_section("startup", body)


if __name__ == "__main__":
    main()
