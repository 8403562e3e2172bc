"""Training throughput of a DML cohort: member loop vs fused with vmap vs fused packed (grouped layers).

    python benchmarks/bench_fused.py            # the measurement (about 20 minutes on a loaded 2-core machine)
    python benchmarks/bench_fused.py --quick    # a smoke run (a minute), marked as not a result

Writes section ``fused`` of docs/results.md. K members of one architecture, DML (simultaneous update, KL, SGD
momentum), batch 64. The three executors train copies of the same cohort in this one process; their timings
are interleaved pass by pass (loop, vmap, packed, loop, ...) so that load from other jobs hits them alike. On
the CPU the clock is the process CPU time (one thread: the CPU time of a pass is its compute, whatever else
the machine runs) and the wall clock is given beside it; on CUDA it is the wall clock after
``torch.cuda.synchronize``. *samples/s* = batch items per second through the whole cohort (every member sees
each item); the spread is (max − min) / median over the passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from results_doc import markdown_table, write_section
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.engine.executors import FusedExecutor

BATCH = 64
MODES = ("loop", "vmap", "packed")
# (model, model_args, image size): small_cnn on 28×28 Fashion-MNIST, the CIFAR ResNet-20 on the same images
# resized to 32×32 (one channel: no CIFAR copy is stored with the benchmarks; the cost is in the later layers)
NETWORKS = {"small_cnn": ("small_cnn", {"width": 32}, 28), "resnet20": ("resnet20", {}, 32)}


def build(network: str, k: int, mode: str, device: str):
    """A prepared DML recipe of ``k`` members whose steps run in ``mode`` (loop / vmap / packed)."""
    model, args, size = NETWORKS[network]
    config = {"data": {"source": "fashion_mnist", "train_subset": 1024, "val_fraction": 0.0, "image_size": size,
                       "batch_size": BATCH},
              "members": [{"name": f"m{i}", "model": model, "model_args": args} for i in range(k)],
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "train": {"threads": 1, "device": device}, "tracking": {"tensorboard": False},
              "engine": {"fused": mode != "loop"}}
    _, _, recipe = prepare_run(load_config(config))
    if mode != "loop":
        recipe.executor = FusedExecutor(recipe, mode=mode)
        assert recipe.executor.mode == mode
    recipe.cohort.train()
    return recipe


def measure(network: str, k: int, device: str, steps: int, passes: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each mode, per pass: {"cpu": [...], "wall": [...]} (cpu only on the CPU)."""
    recipes = {mode: build(network, k, mode, device) for mode in MODES}
    batches = [b for _, (_, b) in zip(range(steps), recipes["loop"].train_stream.epoch(0))]
    for recipe in recipes.values():  # warm-up: allocator, oneDNN / cuDNN kernel choice
        for batch in batches[:2]:
            recipe.step(batch)
    times = {mode: {"cpu": [], "wall": []} for mode in MODES}
    cuda = device == "cuda"
    for _ in range(passes):
        for mode, recipe in recipes.items():
            if cuda:
                torch.cuda.synchronize()
            cpu, wall = time.process_time(), time.perf_counter()
            for batch in batches:
                recipe.step(batch)
            if cuda:
                torch.cuda.synchronize()
            times[mode]["cpu"].append((time.process_time() - cpu) / len(batches))
            times[mode]["wall"].append((time.perf_counter() - wall) / len(batches))
    return times


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def rows_for(network: str, k: int, times, clocks: list[str]) -> list[list[str]]:
    loop = {clock: statistics.median(times["loop"][clock]) for clock in clocks}
    rows = []
    for mode in MODES:
        row = [network, str(k), mode]
        for clock in clocks:
            t = statistics.median(times[mode][clock])
            row += [f"{BATCH / t:.0f} (±{100 * spread(times[mode][clock]) / 2:.0f}%)", f"{loop[clock] / t:.2f}×"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave docs/results.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, passes = (3, 2) if args.quick else (4, 5)
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    body = (f"## Fused cohort: member loop vs vmap vs packed{tag}\n\n"
            f"DML (simultaneous update, KL, SGD momentum) of K members of one architecture, batch {BATCH}: "
            "`small_cnn` (width 32) on 28×28 Fashion-MNIST and `resnet20` on the same images resized to 32×32 "
            "(one channel). *loop* = one forward/backward per member; *vmap* = `engine.fused` with the "
            "architecture mapped over stacked parameters; *packed* = `engine.fused` with one network whose "
            "layers are grouped by member (`engine.packed`, the automatic choice for these networks). Median "
            f"over {passes} interleaved passes of {steps} steps (after 2 warm-up steps); in brackets half the "
            "range (max − min) / 2 relative to the median. *speed-up* = loop time / mode time.")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        k = 4 if device == "cpu" else 8
        clocks = ["cpu", "wall"] if device == "cpu" else ["wall"]
        rows = []
        for network in NETWORKS:
            times = measure(network, k, device, steps, passes)
            rows += rows_for(network, k, times, clocks)
            print(device, network, {m: round(1000 * statistics.median(t[clocks[0]]), 1) for m, t in times.items()},
                  flush=True)
        headers = ["network", "K", "mode"]
        for clock in clocks:
            name = "CPU time" if clock == "cpu" else "wall clock"
            headers += [f"samples/s ({name})", f"speed-up ({name})"]
        title = torch.cuda.get_device_name(0) if device == "cuda" else "CPU, one thread (the machine may be shared with other jobs)"
        body += f"\n\n### {title}\n\n" + markdown_table(headers, rows)
    if "cuda" not in devices:
        body += ("\n\n**GPU: not measured.** No GPU was available to this run; on a machine with CUDA the same "
                 "command adds a table for K = 8 (and `make bench-gpu` checks the CUDA paths).")
    print(body)
    if not args.no_write:
        write_section("fused", body)


if __name__ == "__main__":
    main()
