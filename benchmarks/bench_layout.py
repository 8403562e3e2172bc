"""CPU memory layout: a DML step with the default channels-last layout against the same step in NCHW.

    python benchmarks/bench_layout.py            # the measurement (about 2 minutes on one core)
    python benchmarks/bench_layout.py --quick    # a smoke run, marked as not a result

Writes section ``cpu-layout`` of docs/results.md. A DML pair of the default network per input size (``small_cnn``
at 28×28 Fashion-MNIST, ``resnet20`` at 32×32), batch 64, one thread, ``engine.channels_last`` unset (the default:
channels-last on a CPU) against ``false`` (NCHW). Both recipes are built in this one process and timed round-robin
on the same batches; seconds per step = median over the rounds of ``timing.median_step_seconds``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_doc import markdown_table, write_section  # noqa: E402
from benchmarks.timing import median_step_seconds  # noqa: E402
from peerlearn.api import prepare_run  # noqa: E402
from peerlearn.config import load_config  # noqa: E402

NETWORKS = {"small_cnn": 28, "resnet20": 32}
LAYOUTS = {"channels-last (default)": None, "NCHW (engine.channels_last: false)": False}


def recipe_for(model: str, size: int, channels_last) -> object:
    engine = {} if channels_last is None else {"channels_last": channels_last}
    config = {"recipe": "mutual", "data": {"source": "fashion_mnist", "train_subset": 1024, "val_fraction": 0.0,
                                           "image_size": size, "batch_size": 64},
              "members": [{"name": f"m{i}", "model": model} for i in range(2)],
              "train": {"threads": 1}, "tracking": {"tensorboard": False}, "engine": engine}
    _, _, recipe = prepare_run(load_config(config))
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (not a result)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, repeats, rounds = (3, 1, 1) if args.quick else (8, 3, 3)
    rows = []
    for model, size in NETWORKS.items():
        recipes = {label: recipe_for(model, size, value) for label, value in LAYOUTS.items()}
        times = {label: [] for label in recipes}
        for _ in range(rounds):
            for label, recipe in recipes.items():
                times[label].append(median_step_seconds(recipe, steps, repeats))
        base = sorted(times["NCHW (engine.channels_last: false)"])[rounds // 2]
        for label, values in times.items():
            value = sorted(values)[rounds // 2]
            rows.append([f"{model} ({size}×{size})", label, f"{value * 1000:.1f}", f"{base / value:.2f}×"])
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    write_section("cpu-layout", (
        f"## CPU memory layout: channels-last against NCHW{tag}\n\n"
        "A DML step (two members, KL, SGD, batch 64, one thread) of the default network for each input size, "
        "with `engine.channels_last` unset (the default: channels-last on a CPU for convolutional members) and set "
        f"to `false`; both built in one process and timed round-robin on the same batches, the median of {rounds} "
        f"rounds of the median of {repeats} passes over {steps} steps.\n\n"
        + markdown_table(["network", "layout", "ms / step", "speed-up over NCHW"], rows) + "\n"))


if __name__ == "__main__":
    main()
