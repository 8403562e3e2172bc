"""Transfer from MNIST to scikit-learn digits: scratch vs cached-features head vs fine-tuning.

    python benchmarks/bench_transfer.py            # full: 3 seeds (about 10 minutes on 1 CPU core)
    python benchmarks/bench_transfer.py --quick    # a smoke run of the whole script (under a minute)

For each seed a small CNN is trained on an MNIST subset (configs/mnist_source.yaml). The digits
(resized to 28x28) are then learned with 5, 20 or all labels per class by the same CNN from scratch
(configs/digits_scratch.yaml), by a new linear head on the source's cached bottleneck features
(configs/digits_transfer_features.yaml) and by fine-tuning every layer
(configs/digits_transfer_finetune.yaml). Budgets are fixed in advance; test accuracy is read at the end
of training (no selection on test, no validation split: every label trains). Writes the section
transfer-digits of docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peerlearn  # noqa: E402
from benchmarks.results_doc import markdown_table, mean_std, write_section  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHODS = {"scratch": "digits_scratch.yaml", "features": "digits_transfer_features.yaml",
           "finetune": "digits_transfer_finetune.yaml"}
# labels per class → (training images, epochs); batch 16, so about 180, 360 and 670 steps
SIZES = {"5": (50, 60), "20": (200, 30), "all": (None, 8)}
COMMON = {"train.progress": "off", "tracking.tensorboard": False, "train.threads": 1}


def train_source(seed: int, out: Path, quick: bool):
    extra = {"data.train_subset": 1000, "train.epochs": 1} if quick else {}
    return peerlearn.train(CONFIGS / "mnist_source.yaml", out=out, **{**COMMON, "seed": seed, **extra})


def train_target(method: str, source_dir: Path, count, epochs: int, seed: int, out: Path, cache: Path):
    overrides = {**COMMON, "seed": seed, "data.train_subset": count, "train.epochs": epochs,
                 "train.eval_every": epochs}
    if method != "scratch":
        overrides.update({"transfer.backbones.0.source": str(source_dir), "transfer.cache_dir": str(cache)})
    started = time.perf_counter()
    result = peerlearn.train(CONFIGS / METHODS[method], out=out, **overrides)
    return result.member_accuracy("test")["a"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(1 if args.quick else args.seeds))
    sizes = {"5": (50, 5)} if args.quick else SIZES
    accuracy = {(k, m): [] for k in sizes for m in METHODS}
    seconds = {(k, m): [] for k in sizes for m in METHODS}
    source_acc, source_seconds = [], []
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        for seed in seeds:
            started = time.perf_counter()
            source = train_source(seed, out, args.quick)
            source_seconds.append(time.perf_counter() - started)
            source_acc.append(source.member_accuracy("val")["a"])
            print(f"seed {seed}: source val top-1 {source_acc[-1]:.4f} ({source_seconds[-1]:.0f} s)", flush=True)
            for key, (count, epochs) in sizes.items():
                for method in METHODS:
                    acc, took = train_target(method, source.run_dir, count, epochs, seed, out, cache)
                    accuracy[key, method].append(acc)
                    seconds[key, method].append(took)
                    print(f"  {key:>3} labels/class  {method:<9} test top-1 {acc:.4f}  {took:.1f} s", flush=True)
    total = time.perf_counter() - begun
    rows = [[key] + [mean_std(accuracy[key, m], 100) for m in METHODS]
            + [" / ".join(f"{statistics.mean(seconds[key, m]):.1f}" for m in METHODS)] for key in sizes]
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    body = (
        f"## Transfer: MNIST → scikit-learn digits{tag}\n\n"
        "Source: `small_cnn` (width 16, BatchNorm) trained on a stratified 6,000-image MNIST subset (5,400 train / "
        "600 validation) for 3 epochs, SGD lr 0.05, cosine (`configs/mnist_source.yaml`); validation top-1 "
        f"{mean_std(source_acc, 100)} %, {statistics.mean(source_seconds):.0f} s per source. Target: the digits "
        "resized to 28×28, train set cut to 5 or 20 images per class (stratified, seeded) or all 1,347; the fixed "
        "450-image digits test split. *scratch*: the same CNN from random weights (`configs/digits_scratch.yaml`). "
        "*features*: the source's bottleneck features (its input adapted to MNIST's layout: resized to 20×20 and "
        "padded to 28×28) computed once, cached, standardised, and a new linear head trained on them "
        "(`configs/digits_transfer_features.yaml`). *finetune*: every layer trains, layer-wise lr decay 0.5 over "
        "3 groups (`configs/digits_transfer_finetune.yaml`). Same optimiser for all (SGD momentum 0.9, lr 0.05, "
        "cosine), batch 16, epochs 60 / 30 / 8 for 5 / 20 / all labels per class (about 180 / 360 / 670 steps), "
        "fixed in advance; no validation split and no selection: test top-1 at the end of training, mean ± std "
        f"over {len(seeds)} seeds (each seed: its own source network, target subset and head). Seconds per run "
        "include loading data and, for *features*, computing the features (no cache hit: each seed has its own "
        "source). One thread; the machine was shared with other jobs, so timings are indicative. "
        f"Whole script: {total / 60:.1f} minutes.\n\n"
        + markdown_table(["labels / class", "scratch top-1 %", "features top-1 %", "finetune top-1 %",
                          "seconds / run (scratch / features / finetune)"], rows))
    write_section("transfer-digits", body)
    print(body)


if __name__ == "__main__":
    main()
