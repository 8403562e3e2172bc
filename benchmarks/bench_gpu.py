"""The GPU check: the CUDA paths work, and the cohort's throughput and peak memory by execution mode.

    make bench-gpu                              # installs the repository, then runs this script
    python benchmarks/bench_gpu.py              # on a CUDA machine: checks + timings (under 5 minutes)
    python benchmarks/bench_gpu.py --cpu-smoke  # the same code on the CPU with tiny settings (not a result)

Needs nothing but the repository: the data are random 3×32×32 images made in memory (throughput does not
depend on the pixels), so no dataset is downloaded. It

1. checks each CUDA path on a DML pair of small CNNs, a few steps each: bf16 autocast (the logits of the forward
   are bf16, the losses fp32 and finite), channels-last (weights and batches in NHWC), pinned memory (the
   training split in page-locked memory), ``torch.compile`` (compiled steps give finite losses), packed fusion
   (``engine.fused`` picks the packed network, and three float64 steps of K = 4 ``resnet20`` equal the loop's
   within 1e-8), and NCCL when there are two or more GPUs (an all-gather between two processes, as distributed DML
   uses);
2. times K = 8 ``resnet20`` members, batch 64, DML, in fp32 and bf16: member loop, fused (packed), fused
   (vmap), compiled loop; samples/s (batch items per second through the cohort; median of 5 timings of 5
   steps after warm-up), the speed-up over the loop, and the peak GPU memory of each mode.

Prints every line as it goes and writes section ``gpu`` of docs/results.md (not with ``--cpu-smoke``).

Exit codes: 0 every check passed; 1 a check failed (the table still printed); 4 no CUDA device (nothing is
run; the message says what torch sees).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

EXIT_CHECK_FAILED, EXIT_NO_CUDA = 1, 4
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cuda_or_exit(cpu_smoke: bool) -> str:
    """The device to use; without CUDA (and without ``--cpu-smoke``) a one-line message and exit code 4."""
    import torch

    if cpu_smoke:
        return "cpu"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        print(f"bench-gpu: no CUDA device: torch {torch.__version__} (CUDA build: {built}) sees "
              f"{torch.cuda.device_count()} GPU(s). Run it on a machine with an NVIDIA GPU and a CUDA build of "
              "torch; nothing was measured.", file=sys.stderr)
        raise SystemExit(EXIT_NO_CUDA)
    return "cuda"


def synthetic(items: int, size: int):
    """Random images [items, 3, size, size] in 0..1 and labels 0..9, as peerlearn ``UserData``."""
    import torch
    from peerlearn.data.user import UserData

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(items, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (items,), generator=generator)
    return UserData(train=(x, y), test=(x[:256], y[:256]), num_classes=10)


def build(device: str, model: str, k: int, items: int, size: int, engine: dict, model_args=None):
    """A prepared DML recipe on synthetic data."""
    from peerlearn.api import prepare_run
    from peerlearn.config import load_config
    from peerlearn.user_inputs import merge_user_inputs

    config = load_config({
        "recipe": "mutual", "seed": 0,
        "data": {"batch_size": 64, "val_fraction": 0.0},
        "members": [{"name": f"m{i}", "model": model, "model_args": model_args or {}} for i in range(k)],
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"device": device, "threads": 4, "progress": "off"}, "tracking": {"tensorboard": False},
        "engine": engine})
    config, inputs = merge_user_inputs(config, False, None, synthetic(items, size))
    _, _, recipe = prepare_run(config, user=inputs)
    recipe.cohort.train()
    return recipe


def batches(recipe, count: int):
    return [b for _, (_, b) in zip(range(count), recipe.train_stream.epoch(0))]


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ checks
def check_bf16(device: str) -> str:
    import torch

    recipe = build(device, "small_cnn", 2, 512, 32, {"precision": "bf16"}, {"width": 16})
    batch = batches(recipe, 1)[0]
    with recipe.autocast():
        raw = recipe.network_forward(recipe.cohort["m0"], batch.x, False)[0]
    expected = torch.bfloat16 if device == "cuda" else torch.float32
    assert raw.dtype == expected, f"the forward gave {raw.dtype}, expected {expected}"
    losses = [float(recipe.step(b)["loss"]) for b in batches(recipe, 3)]
    assert all(map(_finite, losses)), f"losses {losses}"
    return f"forward in {raw.dtype}, losses fp32 and finite ({losses[-1]:.3f})"


def check_channels_last(device: str) -> str:
    import torch

    recipe = build(device, "small_cnn", 2, 512, 32, {"channels_last": True}, {"width": 16})
    weight = recipe.cohort["m0"].model.body[0][0].weight
    batch = batches(recipe, 1)[0]
    if device == "cuda":
        assert weight.is_contiguous(memory_format=torch.channels_last), "member weights are not channels-last"
        assert batch.x.is_contiguous(memory_format=torch.channels_last), "batches are not channels-last"
    losses = [float(recipe.step(b)["loss"]) for b in batches(recipe, 3)]
    assert all(map(_finite, losses)), f"losses {losses}"
    return "weights and batches NHWC, steps finite"


def check_pinned(device: str) -> str:
    recipe = build(device, "small_cnn", 2, 512, 32, {"pin_memory": True}, {"width": 16})
    stream = recipe.train_stream
    if device == "cuda":
        assert stream.x.is_pinned() and stream.y.is_pinned(), "the training split is not in pinned memory"
        assert batches(recipe, 1)[0].x.device.type == "cuda", "the batch did not reach the GPU"
    losses = [float(recipe.step(b)["loss"]) for b in batches(recipe, 3)]
    assert all(map(_finite, losses)), f"losses {losses}"
    return "training split pinned, batches copied to the device"


def check_compile(device: str) -> str:
    started = time.perf_counter()
    recipe = build(device, "small_cnn", 2, 512, 32, {"compile": True, "compile_backend": BACKEND}, {"width": 16})
    losses = [float(recipe.step(b)["loss"]) for b in batches(recipe, 3)]
    assert all(map(_finite, losses)), f"losses {losses}"
    return f"compiled steps finite (first 3 steps incl. compilation: {time.perf_counter() - started:.1f} s)"


def check_packed(device: str) -> str:
    """Packed chosen, and three steps equal to the loop's in float64 (in float32 a rounding difference of 1e-7
    can flip a ReLU and move a weight by lr · O(1), which would say nothing about the packing)."""
    loop = build(device, "resnet20", 4, 512, 32, {})
    fused = build(device, "resnet20", 4, 512, 32, {"fused": True})
    assert fused.executor.mode == "packed", f"the fused executor chose {fused.executor.mode}"
    for member in [*loop.cohort, *fused.cohort]:
        member.model.double()
    for batch in batches(loop, 3):
        batch = type(batch)(batch.x.double(), batch.y, batch.index)
        loop.step(batch)
        fused.step(batch)
    worst = max(float((a - b).abs().max()) for m, n in zip(loop.cohort, fused.cohort)
                for a, b in zip(m.model.state_dict().values(), n.model.state_dict().values())
                if a.is_floating_point())
    assert worst < 1e-8, f"packed and loop weights differ by {worst:.2e} after 3 float64 steps"
    return f"packed chosen; after 3 float64 steps max |Δ| = {worst:.1e} against the loop"


def _gather(rank: int, world: int, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", rank=rank, world_size=world)
        rows = [torch.zeros(3, device="cuda") for _ in range(world)]
        dist.all_gather(rows, torch.full((3,), float(rank), device="cuda"))
        queue.put((rank, [float(r[0]) for r in rows]))
        dist.destroy_process_group()
    except Exception as error:  # reported by the parent
        queue.put((rank, repr(error)))


def check_nccl(device: str) -> str:
    import socket

    import torch
    import torch.multiprocessing as mp

    if device != "cuda" or torch.cuda.device_count() < 2:
        return "SKIP: one GPU (NCCL needs two)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_gather, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert all(value == [0.0, 1.0] for value in results.values()), f"all-gather gave {results}"
    return "all-gather between 2 GPUs over NCCL"


CHECKS = {"bf16 autocast": check_bf16, "channels-last": check_channels_last, "pinned memory": check_pinned,
          "torch.compile": check_compile, "packed fusion": check_packed, "NCCL": check_nccl}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# ------------------------------------------------------------------ timings
# Compiling K members (one graph per member: the compiled training forward is specialised on the module) is the
# slowest part; it is started only while the run is this far (seconds) into its 5 minutes.
COMPILE_BY_S = {"fp32": 150.0, "bf16": 210.0}
BACKEND = "inductor"  # "eager" in a CPU smoke run: the code path without minutes of C++ compilation
MODES = {"loop": ({}, None), "fused (packed)": ({"fused": True}, "packed"), "fused (vmap)": ({"fused": True}, "vmap"),
         "compiled loop": ({"compile": True}, None)}


def time_mode(device: str, k: int, engine: dict, fused_mode, items: int, steps: int, repeats: int):
    """(seconds per step: median over repeats, peak memory in MiB) of one execution mode."""
    import torch
    from peerlearn.engine.executors import FusedExecutor

    if engine.get("compile"):
        engine = {**engine, "compile_backend": BACKEND}
    recipe = build(device, "resnet20", k, items, 32, engine)
    if fused_mode is not None:
        recipe.executor = FusedExecutor(recipe, mode=fused_mode)
    chosen = batches(recipe, steps)
    for batch in chosen[:3]:  # warm-up (and compilation)
        recipe.step(batch)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        for batch in chosen:
            recipe.step(batch)
        synchronize(device)
        timings.append((time.perf_counter() - started) / len(chosen))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    del recipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(timings), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the same code on the CPU with tiny settings (checks the script, not a result)")
    args = parser.parse_args()
    device = cuda_or_exit(args.cpu_smoke)
    import torch

    global BACKEND
    BACKEND = "eager" if device == "cpu" else "inductor"

    from results_doc import markdown_table, write_section

    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke run)"
    print(f"bench-gpu on {name}, torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)", flush=True)
    check_rows, failed = [], False
    for check, function in CHECKS.items():
        t0 = time.perf_counter()
        try:
            detail = function(device)
            status = "skipped" if detail.startswith("SKIP") else "ok"
            detail = detail.removeprefix("SKIP: ")
        except Exception as error:  # every check reports, none stops the others
            failed, status = True, "FAILED"
            detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            traceback.print_exc()
        check_rows.append([check, status, detail, f"{time.perf_counter() - t0:.1f}"])
        print(f"  {check}: {status} ({detail})", flush=True)

    k, items, steps, repeats = (8, 2048, 5, 5) if device == "cuda" else (2, 256, 2, 1)
    timing_rows = []
    for precision in ("fp32", "bf16"):
        loop_seconds = None
        for mode, (engine, fused_mode) in MODES.items():
            if precision == "bf16" and mode == "fused (vmap)":
                continue  # vmap is measured once, in fp32
            elapsed = time.perf_counter() - started
            if mode == "compiled loop" and elapsed > COMPILE_BY_S[precision]:
                timing_rows.append([precision, mode, "skipped", f"{elapsed:.0f} s already spent", "", ""])
                print(f"  {precision} {mode}: skipped to stay within 5 minutes ({elapsed:.0f} s spent)", flush=True)
                continue
            try:
                seconds, peak = time_mode(device, k, {**engine, "precision": precision}, fused_mode, items, steps,
                                          repeats)
            except Exception as error:
                failed = True
                timing_rows.append([precision, mode, "FAILED", type(error).__name__, "", ""])
                print(f"  {precision} {mode}: FAILED {error!r}", flush=True)
                continue
            loop_seconds = seconds if mode == "loop" else loop_seconds
            row = [precision, mode, f"{64 / seconds:.0f}", f"{1000 * seconds:.1f}",
                   f"{loop_seconds / seconds:.2f}×" if loop_seconds else "", f"{peak:.0f}"]
            timing_rows.append(row)
            print("  " + " | ".join(row), flush=True)
    total = time.perf_counter() - started
    body = (f"## GPU check and throughput{' (CPU SMOKE RUN: not a result)' if device == 'cpu' else ''}\n\n"
            f"`make bench-gpu` on {name}: random 3×32×32 images in memory, DML (simultaneous, KL, SGD momentum), "
            f"batch 64; {total:.0f} s in all.\n\n"
            + markdown_table(["check", "result", "detail", "s"], check_rows)
            + f"\n\nK = {k} `resnet20` members; samples/s = batch items per second through the cohort (median of "
              f"{repeats} timings of {steps} steps after 3 warm-up steps); speed-up over the loop of the same "
              "precision; peak = `torch.cuda.max_memory_allocated` during the timed steps.\n\n"
            + markdown_table(["precision", "mode", "samples/s", "ms / step", "speed-up", "peak MiB"], timing_rows))
    print("\n" + body)
    if device == "cuda":
        write_section("gpu", body)
    return EXIT_CHECK_FAILED if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
