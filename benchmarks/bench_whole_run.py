"""A whole run of ``peerlearn train`` against a plain PyTorch loop doing the same work: CPU time and peak memory.

    python benchmarks/bench_whole_run.py            # 5 runs of each side and configuration (about 5 minutes)
    python benchmarks/bench_whole_run.py --quick    # a smoke run of the whole script, marked as not a result

Two configurations: the *defaults* as shipped (TensorBoard events, a step record every 50 steps, the validation
split after every epoch and the test split once at the end: ``train.eval_test`` is off by default) and the
*trimmed* one (TensorBoard off). The plain loop does the same evaluation work in both (it writes no event files).

The work: Deep Mutual Learning of two ``small_cnn`` (width 16) on 6,000 Fashion-MNIST training images
(5,400 train / 600 validation, the same items on both sides), resized to 14×14, batch 64, SGD Nesterov,
3 epochs, the validation split scored after every epoch and the 10,000 test images at the end. The plain
side is ``benchmarks/plain_dml_loop.py`` (torch, numpy and the standard library only), run with
``--channels-last``: peerlearn trains convolutional networks in channels-last order on a CPU by default, which
is worth more than 1.3× on this machine's convolutions and pooling, so the plain loop uses the same layout and
the ratio measures peerlearn's overhead, not the layout.

Every run is a fresh process, started from here, so that each side pays its own start-up (imports) and its
memory is its own: CPU time (user + system) and peak resident memory come from ``os.wait4`` on that child.
The sides take turns (A B C, C B A, ...) so that load from other jobs hits them alike; all use one thread.
Writes section ``whole-run`` of docs/results.md.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.plain_dml_loop import read_idx  # noqa: E402
from benchmarks.results_doc import markdown_table, mean_std, write_section  # noqa: E402
from peerlearn.data.splits import stratified_subset, validation_split  # noqa: E402

GOAL_CPU, GOAL_MEMORY, GOAL_SYSTEM = 1.03, 1.2, 0.05  # CPU-time and peak-memory ratios; system share of a run
SEED = 0


def run_config(subset: int, epochs: int, defaults: bool = False) -> dict:
    """The peerlearn config of the benchmark: with ``defaults`` the shipped tracking and evaluation settings
    (TensorBoard on), else trimmed (TensorBoard off: the plain loop writes no event files); both score the test
    split once, at the end, as the plain loop does."""
    config = {
        "name": "whole-run", "recipe": "mutual", "seed": SEED,
        "data": {"source": "fashion_mnist", "train_subset": subset, "val_fraction": 0.1, "image_size": 14,
                 "batch_size": 64},
        "members": [{"name": n, "model": "small_cnn", "model_args": {"width": 16}} for n in ("a", "b")],
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005},
        "train": {"epochs": epochs, "threads": 1, "progress": "off", "eval_test": False},
        "tracking": {"tensorboard": False},
        "mutual": {"weight": 1.0, "temperature": 1.0, "divergence": "kl", "update": "simultaneous"},
    }
    if defaults:
        del config["train"]["eval_test"], config["tracking"]
    return config


CONFIGURATIONS = {"defaults": True, "trimmed": False}
SIDES = ["peerlearn", "plain", "plain-gc"]  # plain-gc: the plain loop with peerlearn's start-up GC setting


def data_root() -> Path:
    return Path(os.environ.get("PEERLEARN_DATA", Path.home() / ".cache" / "peerlearn"))


def write_indices(path: Path, subset: int) -> None:
    """The training and validation items peerlearn's ``load_data`` picks for this config (same functions,
    same seeds), for the plain loop to use."""
    labels = torch.from_numpy(read_idx(data_root() / "fashion-mnist" / "train-labels-idx1-ubyte.gz").astype("int64"))
    keep = stratified_subset(labels, subset, seed=SEED + 101)
    train, val = validation_split(labels[keep], 0.1, seed=SEED + 202)
    torch.save({"train": keep[train], "val": keep[val]}, path)


def compile_sources() -> None:
    """Write the bytecode of peerlearn's modules and of the plain loop's module before any timed run.

    An installed package carries its bytecode (pip compiles it; an editable install writes it on the first
    import), and torch's is in site-packages. Where ``PYTHONDONTWRITEBYTECODE`` is set (as on some CI and
    sandbox machines) Python would compile peerlearn's ~150 modules anew in every timed run, a cost no user
    pays twice; existing bytecode is still read with that setting."""
    for folder in (ROOT / "src", ROOT / "benchmarks"):
        if not compileall.compile_dir(folder, quiet=1):
            raise SystemExit(f"cannot compile the modules under {folder}")


def child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PEERLEARN_DATA=str(data_root()))
    env.pop("PYTHONSTARTUP", None)
    return env


def measure(command: list[str], log: Path) -> dict:
    """Run ``command`` as a child process; its CPU seconds, peak resident memory (MiB) and wall seconds."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return {"cpu": usage.ru_utime + usage.ru_stime, "system": usage.ru_stime, "rss": usage.ru_maxrss / 1024,
            "wall": wall}


def peerlearn_side(work: Path, config: Path, rep: int, tag: str) -> dict:
    out = work / f"peerlearn-{tag}-{rep}"
    found = measure([sys.executable, "-m", "peerlearn", "train", str(config), "--out", str(out)],
                    work / f"p-{tag}-{rep}.log")
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    found["test_top1"] = summary["ensemble"]["test"]["top1"]
    return found


def plain_side(work: Path, indices: Path, epochs: int, rep: int, tag: str, freeze_gc: bool = False) -> dict:
    out = work / f"plain{'-gc' if freeze_gc else ''}-{tag}-{rep}"
    found = measure([sys.executable, str(ROOT / "benchmarks" / "plain_dml_loop.py"), "--data", str(data_root()),
                     "--indices", str(indices), "--out", str(out), "--epochs", str(epochs), "--channels-last"]
                    + (["--freeze-gc"] if freeze_gc else []), work / f"l{'-gc' if freeze_gc else ''}-{tag}-{rep}.log")
    found["test_top1"] = json.loads((out / "metrics.json").read_text())["final"]["test"]["ensemble"]["top1"]
    return found


def startup(work: Path) -> dict[str, dict]:
    """Start-up alone: a process that imports what each side imports before its first step, then exits."""
    return {"peerlearn": measure([sys.executable, "-c", "import peerlearn.cli, peerlearn.recipes.mutual"],
                                 work / "s-peerlearn.log"),
            "plain": measure([sys.executable, "-c", "import numpy, torch, torch.nn.functional"], work / "s-plain.log")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 epoch, 1,200 images: a smoke run")
    parser.add_argument("--reps", type=int, default=5, help="runs of each side")
    parser.add_argument("--work", type=Path, help="keep the runs and logs here (default: a temporary folder)")
    args = parser.parse_args()
    reps, epochs, subset = (1, 1, 1200) if args.quick else (args.reps, 3, 6000)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        configs = {}
        for tag, defaults in CONFIGURATIONS.items():
            configs[tag] = work / f"config-{tag}.yaml"
            configs[tag].write_text(yaml.safe_dump(run_config(subset, epochs, defaults), sort_keys=False))
        indices = work / "indices.pt"
        write_indices(indices, subset)
        for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):  # both sides find them cached
            (data_root() / "fashion-mnist" / name).read_bytes()
        compile_sources()
        runs = {tag: {side: [] for side in SIDES} for tag in CONFIGURATIONS}
        started = time.perf_counter()
        for rep in range(reps):
            for tag, defaults in CONFIGURATIONS.items():
                order = SIDES if rep % 2 == 0 else SIDES[::-1]
                for side in order:
                    found = (peerlearn_side(work, configs[tag], rep, tag) if side == "peerlearn"
                             else plain_side(work, indices, epochs, rep, tag, freeze_gc=side == "plain-gc"))
                    runs[tag][side].append(found)
                    print(tag, side, rep, {k: round(v, 3) for k, v in found.items()}, flush=True)
        starts = startup(work)
        total = time.perf_counter() - started
    write_section("whole-run", render(runs, starts, reps, epochs, subset, total, args.quick))


def comparison(p: list[dict], q: list[dict], g: list[dict]) -> tuple[str, str]:
    """The table of one configuration and its verdict line (p: peerlearn, q: the plain loop, g: the plain loop
    with peerlearn's start-up GC setting)."""
    cpu_ratio = statistics.mean(r["cpu"] for r in p) / statistics.mean(r["cpu"] for r in q)
    rss_ratio = statistics.mean(r["rss"] for r in p) / statistics.mean(r["rss"] for r in q)
    system_share = statistics.mean(r["system"] / r["cpu"] for r in p)
    plain_share = statistics.mean(r["system"] / r["cpu"] for r in q)
    pair_cpu = [a["cpu"] / b["cpu"] for a, b in zip(p, q)]
    rows = [[label, mean_std([r["cpu"] for r in side]), mean_std([r["system"] for r in side]),
             mean_std([r["wall"] for r in side]), mean_std([r["rss"] for r in side], digits=0),
             mean_std([r["test_top1"] for r in side], 100)]
            for label, side in (("`peerlearn train`", p), ("plain PyTorch loop", q),
                                ("plain loop with peerlearn's GC setting (`--freeze-gc`)", g))]
    same_gc = statistics.mean(r["cpu"] for r in p) / statistics.mean(r["cpu"] for r in g)
    rows.append(["ratio peerlearn / plain", f"**{cpu_ratio:.3f}** (goal ≤ {GOAL_CPU}); against the plain loop "
                 f"with the same GC setting: {same_gc:.3f}",
                 f"peerlearn: {100 * system_share:.1f}% of its CPU time (goal ≤ {100 * GOAL_SYSTEM:.0f}%; the plain "
                 f"loop: {100 * plain_share:.1f}%)", "",
                 f"**{rss_ratio:.2f}** (goal ≤ {GOAL_MEMORY})", ""])
    missed = [name for name, ok in (("CPU time", cpu_ratio <= GOAL_CPU), ("peak memory", rss_ratio <= GOAL_MEMORY),
                                    ("system time", system_share <= GOAL_SYSTEM)) if not ok]
    verdict = "every goal met" if not missed else "goal missed: " + ", ".join(missed)
    table = markdown_table(["", "CPU s", "system s", "wall s", "peak MiB", "test top-1 %"], rows)
    return table, (f"CPU-time ratio per pair of runs: {', '.join(f'{r:.3f}' for r in pair_cpu)} (median "
                   f"{statistics.median(pair_cpu):.3f}). Result: {verdict}.")


def render(runs: dict[str, dict[str, list[dict]]], starts: dict[str, dict], reps: int, epochs: int, subset: int,
           total: float, quick: bool) -> str:
    start_rows = [[label, f"{starts[key]['cpu']:.2f}", f"{starts[key]['rss']:.0f}"]
                  for label, key in (("`import peerlearn.cli, peerlearn.recipes.mutual`", "peerlearn"),
                                     ("`import numpy, torch`", "plain"))]
    tables = ""
    for tag, title in (("defaults", "The shipped defaults (TensorBoard on, a step record every 50 steps, the test "
                                    "split scored once at the end)"),
                       ("trimmed", "Trimmed (TensorBoard off)")):
        table, verdict = comparison(runs[tag]["peerlearn"], runs[tag]["plain"], runs[tag]["plain-gc"])
        tables += f"### {title}\n\n{table}\n\n{verdict}\n\n"
    tag = " (QUICK SMOKE RUN: not a result)" if quick else ""
    return (
        f"## A whole run: `peerlearn train` against a plain PyTorch loop{tag}\n\n"
        f"Deep Mutual Learning of two `small_cnn` (width 16) on {subset:,} Fashion-MNIST training images "
        f"({subset - round(subset * 0.1):,} train / {round(subset * 0.1):,} validation, the same items on both "
        f"sides), 14×14, batch 64, SGD Nesterov lr 0.05, {epochs} epochs, the validation split scored after every "
        "epoch and the 10,000 test images at the end (on both sides, in both configurations). *peerlearn*: "
        "`python -m peerlearn train` on the config written by the script, with its defaults otherwise (deterministic "
        "kernels; metrics.jsonl, a checkpoint every epoch, summary, final weights). "
        "*plain*: `benchmarks/plain_dml_loop.py`, the same data pipeline, models, loss, optimizer and evaluation "
        "written directly in PyTorch (final weights and metrics saved; PyTorch's default kernels), with models and "
        "batches in channels-last order as peerlearn's CPU default has them (`--channels-last`), so that the ratio "
        "is peerlearn's overhead and not the layout. *plain loop with peerlearn's GC setting*: the same loop run "
        "with `--freeze-gc`, which pauses Python's cyclic garbage collector during start-up and then freezes what "
        "start-up allocated, as `peerlearn`'s command line does (`peerlearn/startup_gc.py`): the ratio against it "
        "is peerlearn's remaining overhead when both sides get that setting. Each run is a "
        f"fresh process started by the script, so each side pays its own imports; {reps} runs of each side and "
        "configuration, taking turns (A B C, C B A, …), one thread each, all from compiled bytecode (the script compiles "
        "peerlearn's modules first, as an installed package has them). *CPU s* = user + system seconds of the "
        "process, *system s* its system part; *peak MiB* = its peak resident memory (`ru_maxrss` from `os.wait4`); "
        "*test top-1* = the ensemble's, a check that both sides learn alike (their initial weights and batch orders "
        "differ). Mean ± std over the runs. The machine (2 cores) may be shared with other jobs, which adds noise to "
        "the CPU times.\n\n"
        + tables
        + "Start-up alone (one process each, importing what the side needs before its first step):\n\n"
        + markdown_table(["imports", "CPU s", "peak MiB"], start_rows)
        + "\n\nWhat closed the gap: `load_data` resizes only the items a run keeps (it resized all 60,000 training "
        "images as floats before sub-sampling them), and deterministic mode no longer fills every new tensor with "
        "NaN (`torch.utils.deterministic.fill_uninitialized_memory`, a guard against reading uninitialised memory, "
        "which the training code never does; the results stay deterministic without it); then the final summary "
        "reuses the last epoch's validation scores when nothing has changed the members since (it scored the "
        "validation split a second time), a fully labelled batch skips the cross-entropy's masking of unlabelled "
        "items, and DML with one peer at T = 1 computes its KL with PyTorch's `kl_div`, without a division by "
        "T = 1 or a multiplication by λ = 1 (equal up to float rounding; about half the loss's cost per step). "
        "TensorBoard events are written by peerlearn's own synchronous writer, flushed (with an fsync) only before "
        "each checkpoint, not per event, so a killed run's curves are complete up to its last checkpoint. "
        "The remaining start-up difference is pydantic, PyYAML and peerlearn's own modules; scikit-learn, "
        "matplotlib, tensorboardX and MLflow are imported only by the commands and options that use them. "
        "Then the command line pauses Python's cyclic garbage collector while a command starts and freezes what "
        "start-up allocated (`gc.freeze()`) before the first step: every full collection otherwise walks the "
        "about 300,000 objects that importing torch and torch._dynamo creates, during start-up and again every "
        "few hundred steps of training, which a plain loop pays too (compare its two rows). "
        "System time: both sides spend about the same absolute time in the kernel (most of it importing torch, "
        "about 0.15 s, and torch._dynamo, which every PyTorch optimizer imports at its first step); as a share it "
        "is near the 5% line on both sides because the whole run takes only about 8 s of CPU."
        + f"\n\nWhole script: {total / 60:.1f} minutes."
    )


if __name__ == "__main__":
    main()
