"""Throughput of a cohort by execution mode and cohort size: loop vs fused, independent vs DML.

    python benchmarks/bench_scale.py            # the full measurement (about 6 minutes on a loaded 2-core machine, one thread)
    python benchmarks/bench_scale.py --quick    # a smoke run (under a minute), marked as not a result

Writes section ``scale`` of docs/results.md. Every timing is taken in this one process, on the CPU,
with one thread; the four modes are interleaved round by round so that load from other jobs on the
machine hits them alike. A step = every member sees one batch of 64 (forward, loss, backward, step).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from results_doc import markdown_table, write_section
from timing import median_step_seconds
from peerlearn.api import prepare_run
from peerlearn.config import load_config

MODES = {
    "independent": {"recipe": "independent"},
    "DML simultaneous": {"recipe": "mutual"},
    "DML sequential": {"recipe": "mutual", "mutual": {"update": "sequential"}},
    "DML fused": {"recipe": "mutual", "engine": {"fused": True}},
}
BATCH = 64


def base_config(k: int, device: str = "cpu") -> dict:
    return {"data": {"source": "fashion_mnist", "train_subset": 2000, "val_fraction": 0.0, "image_size": 14,
                     "batch_size": BATCH},
            "members": [{"name": f"m{i}", "model": "small_cnn", "model_args": {"width": 16}} for i in range(k)],
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"threads": 1, "device": device},
            "tracking": {"tensorboard": False}}


def time_steps(config, steps: int, repeats: int) -> float:
    """Median seconds per training step (after 3 warm-up steps) of the recipe ``config`` describes."""
    _, _, recipe = prepare_run(config)
    return median_step_seconds(recipe, steps, repeats)


def measure(sizes: list[int], steps: int, repeats: int, rounds: int,
            device: str = "cpu") -> dict[int, dict[str, list[float]]]:
    times: dict[int, dict[str, list[float]]] = {}
    for k in sizes:
        times[k] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode, extra in MODES.items():
                times[k][mode].append(time_steps(load_config({**base_config(k, device), **extra}), steps, repeats))
        print(device, k, {m: round(statistics.median(t) * 1000, 1) for m, t in times[k].items()}, flush=True)
    return times


def tables(times: dict[int, dict[str, list[float]]]) -> tuple[list[list[str]], list[list[str]]]:
    rows, scaling = [], []
    first = min(times)
    for k, by_mode in times.items():
        t = {m: statistics.median(v) for m, v in by_mode.items()}
        spread = {m: (statistics.stdev(v) / statistics.mean(v) if len(v) > 1 else 0.0) for m, v in by_mode.items()}
        rows.append([str(k)] + [f"{BATCH / t[m]:.0f} (±{100 * spread[m]:.0f}%)" for m in MODES]
                    + [f"{t['DML simultaneous'] / t['independent']:.2f}",
                       f"{t['DML sequential'] / t['DML simultaneous']:.2f}",
                       f"{t['DML simultaneous'] / t['DML fused']:.2f}"])
        base = {m: statistics.median(v) for m, v in times[first].items()}
        scaling.append([str(k)] + [f"{1000 * t[m]:.1f} ms ({t[m] / base[m]:.2f}×)" for m in MODES])
    return rows, scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes, steps, repeats, rounds = ([2, 4], 6, 1, 1) if args.quick else ([2, 4, 8], 12, 2, 3)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    body = (
        f"## Cohort throughput by execution mode{tag}\n\n"
        f"K small CNNs (`small_cnn`, width 16, BatchNorm) on 14×14 Fashion-MNIST batches of {BATCH}, SGD momentum, "
        f"one process (on the CPU with one thread); median over {rounds} interleaved rounds of the median of "
        f"{repeats} timings of {steps} steps (after 3 warm-up steps); in brackets the spread (std / mean) over the "
        "rounds. The machine may be shared with other jobs, which adds noise to every timing. *samples/s* = batch "
        "items per second through the whole cohort (every member sees each item). *fused* = DML simultaneous with "
        "`engine.fused: true` (one batched forward/backward for all members: the packed network with layers grouped "
        "by member for `small_cnn`, each member's own optimizer; `bench_fused.py` compares packed with vmap).")
    for device in devices:
        times = measure(sizes, steps, repeats, rounds, device)
        rows, scaling = tables(times)
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU, one thread"
        body += (
            f"\n\n### {name}\n\n"
            + markdown_table(["K"] + [f"{m} samples/s" for m in MODES]
                             + ["simultaneous / independent (time)", "sequential / simultaneous (time)",
                                "fused speed-up over simultaneous"], rows)
            + f"\n\nStep time and its growth with K (relative to K = {min(times)}):\n\n"
            + markdown_table(["K"] + list(MODES), scaling))
    if "cuda" not in devices:
        body += ("\n\n**GPU: not measured.** No GPU was available to this run, so there are no GPU numbers here; "
                 "on a machine with CUDA the same command adds a GPU table.")
    write_section("scale", body)


if __name__ == "__main__":
    main()
