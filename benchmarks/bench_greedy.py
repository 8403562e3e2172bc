"""Greedy layerwise training vs end-to-end training of the same network, on Fashion-MNIST.

    python benchmarks/bench_greedy.py            # full: k = 1, 2, 3 × {greedy, end-to-end} × 3 seeds
    python benchmarks/bench_greedy.py --quick    # a smoke run of the whole script (under a minute)

Writes sections greedy-fmnist (test accuracy, mean ± std over seeds, final epoch, no selection on test;
the heads' ensemble; linear separability by depth; wall time with and without the prefix cache) and
greedy-memory (the memory a training step keeps for backpropagation; ``--only memory`` writes only it)
of docs/results.md.
Sized for one CPU core: 5000 training images resized to 16×16, 3 blocks, 8 epochs per stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peerlearn  # noqa: E402
from benchmarks.results_doc import markdown_table, mean_std, write_section  # noqa: E402
from peerlearn.analysis_runner import analysis_stream  # noqa: E402
from peerlearn.api import prepare_run  # noqa: E402
from peerlearn.config import load_config  # noqa: E402
from peerlearn.evaluate.probe import separability_by_depth  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KS = (1, 2, 3)
MODES = {"greedy": "fmnist_greedy_k{k}.yaml", "end-to-end": "fmnist_end_to_end.yaml"}


def overrides(mode: str, k: int, seed: int, quick: bool, cache: str = "auto") -> dict:
    extra = {"seed": seed, "tracking.tensorboard": False, "train.threads": 1, "greedy.cache": cache}
    if mode == "end-to-end":
        extra["members.0.model_args.k"] = k
    if quick:
        extra.update({"data.train_subset": 600, "greedy.epochs": 1})
    return extra


def train(mode: str, k: int, seed: int, out: Path, quick: bool, cache: str = "auto"):
    config = CONFIGS / MODES[mode].format(k=k)
    return peerlearn.train(config, out=out, **overrides(mode, k, seed, quick, cache))


# --------------------------------------------------------------------------- memory of one step
def step_memory(mode: str, k: int, quick: bool) -> list[tuple[str, int, int]]:
    """(stage, bytes saved for backward, bytes of trainable parameters + gradients + momentum) per stage.

    The activations an optimisation step keeps for its backward pass are counted exactly with
    ``torch.autograd.graph.saved_tensors_hooks`` (each distinct storage once); frozen blocks run
    without gradients, so they keep nothing.
    """
    config = load_config(CONFIGS / MODES[mode].format(k=k), overrides(mode, k, 0, quick))
    _, _, recipe = prepare_run(config)
    stages = recipe.stages()
    batch = next(b for _, b in recipe.train_stream.epoch(0))
    rows = []
    for index, stage in enumerate(stages):
        stage.start()
        recipe.cohort.train()
        step_batch = next(b for _, b in stage.train_stream.epoch(0)) if stage.train_stream else batch
        seen: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            recipe.step(step_batch)
        # the parameters this stage's optimizer updated (they received a gradient)
        params = [p for group in recipe.member.optimizer.param_groups for p in group["params"] if p.grad is not None]
        state = sum(p.numel() * p.element_size() for p in params) * 3  # weights, gradients, SGD momentum
        rows.append((stage.name, sum(seen.values()), state))
    return rows


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run of the whole script")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--probe-items", type=int, default=2000, help="training items the linear probes are fitted on")
    parser.add_argument("--only", choices=["all", "memory"], default="all",
                        help="memory: only the memory section (a minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    memory = {(mode, k): step_memory(mode, k, args.quick) for k in KS for mode in MODES}
    write_section("greedy-memory", render_memory(memory, args))
    if args.only == "memory":
        return
    seeds = list(range(1 if args.quick else args.seeds))
    probe_items = 300 if args.quick else args.probe_items
    started = time.perf_counter()

    acc: dict[tuple[str, int], dict[str, list]] = {}
    probes: dict[tuple[str, int], list[list[dict]]] = {}
    cache_on: dict[int, dict] = {}
    cache_off: dict[int, dict] = {}
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        for k in KS:
            for mode in MODES:
                entry = acc.setdefault((mode, k), {"test": [], "val": [], "ensemble": [], "heads": [], "wall": []})
                for seed in seeds:
                    result = train(mode, k, seed, out, args.quick)
                    summary = result.summary
                    entry["test"].append(summary["members"]["net"]["test"]["top1"])
                    entry["val"].append(summary["members"]["net"]["val"]["top1"])
                    entry["wall"].append(summary["wall_seconds"])
                    if mode == "greedy":
                        entry["ensemble"].append(summary["greedy"]["test"]["ensemble"]["top1"])
                        entry["heads"].append(summary["greedy"]["test"]["heads_top1"])
                        if seed == 0:  # the same run without the prefix cache, right after it
                            cache_on[k] = summary
                            cache_off[k] = train(mode, k, seed, out, args.quick, cache="off").summary
                    model = result.cohort["net"].model
                    probes.setdefault((mode, k), []).append(separability_by_depth(
                        model, analysis_stream(result.recipe, "train", probe_items),
                        analysis_stream(result.recipe, "test")))
                    print(f"{mode} k={k} seed={seed}: test {entry['test'][-1]:.4f} "
                          f"({summary['wall_seconds']:.1f} s, {time.perf_counter() - started:.0f} s so far)",
                          flush=True)
    total = time.perf_counter() - started
    write_section("greedy-fmnist", render(acc, probes, cache_on, cache_off, seeds, args, total))
    print(f"done in {total:.0f} s")


def render(acc, probes, cache_on, cache_off, seeds, args, total) -> str:
    config = load_config(CONFIGS / "fmnist_greedy_k1.yaml", overrides("greedy", 1, 0, args.quick))
    data, greedy = config.data, config.greedy
    epochs = greedy.epochs
    lines = [
        "## Greedy layerwise vs end-to-end training (Fashion-MNIST)",
        "",
        f"`layerwise_cnn` with 3 blocks (widths 16, 32, 64; invertible downsampling before blocks 1 and 2), "
        f"trained greedily (one block and its auxiliary head per stage, earlier blocks frozen) or end to end "
        f"(same network, last auxiliary head as classifier). Fashion-MNIST, {data.train_subset} training images "
        f"({int(data.val_fraction * 100)}% held out for validation) resized to {data.image_size}×{data.image_size}, "
        f"full 10 000-image test set, no augmentation. Every greedy stage and the end-to-end run: {epochs} epoch(s), "
        f"SGD momentum 0.9, lr 0.05 ×0.2 every 3 epochs, weight decay 5e-4, batch 64 (so every layer is trained "
        f"for the same number of epochs). Test accuracy is read after the last epoch (no model selection); "
        f"mean ± std over seeds {', '.join(map(str, seeds))}. One CPU thread; the machine was shared with other "
        f"jobs, so the times are indicative only." + (" **Quick smoke run: numbers are meaningless.**"
                                                       if args.quick else ""),
        "",
        "### Test accuracy (%)",
        "",
    ]
    rows = []
    for k in KS:
        g, e = acc[("greedy", k)], acc[("end-to-end", k)]
        heads = [statistics.mean(h[j] for h in g["heads"]) * 100 for j in range(len(g["heads"][0]))]
        rows.append([k, mean_std(g["test"], 100), mean_std(g["ensemble"], 100), mean_std(e["test"], 100),
                     " / ".join(f"{h:.1f}" for h in heads), mean_std(g["wall"], 1, 1), mean_std(e["wall"], 1, 1)])
    lines.append(markdown_table(["k", "greedy (last head)", "greedy ensemble Z = Σ 2^j z_j", "end-to-end",
                                 "greedy heads z_0 / z_1 / z_2 (mean)", "greedy wall s", "end-to-end wall s"], rows))
    lines += ["", "### Linear separability by depth (probe test accuracy %, mean ± std; train accuracy in brackets)",
              "",
              f"A logistic regression (standardised features, C = 1) on each depth's output averaged to 2×2, fitted "
              f"on {300 if args.quick else args.probe_items} training images and scored on the test set "
              "(`peerlearn.evaluate.probe.separability_by_depth`, also `peerlearn probe RUN_DIR`).", ""]
    rows = []
    depth_names = [r["name"] for r in next(iter(probes.values()))[0]]
    for (mode, k), runs in probes.items():
        cells = []
        for d in range(len(depth_names)):
            test = [run[d]["test"] for run in runs]
            train = statistics.mean(run[d]["train"] for run in runs) * 100
            cells.append(f"{mean_std(test, 100, 1)} ({train:.1f})")
        rows.append([f"{mode}, k={k}", *cells])
    lines.append(markdown_table(["network", *depth_names], rows))
    lines += ["", "### Wall time with and without the prefix cache (greedy, seed 0)", "",
              "With the cache, the frozen prefix's outputs on the training set are computed once at the start "
              "of each stage; without it they are recomputed in every step (evaluation always runs the whole "
              "network). Stage times include caching and the per-epoch validation; the run times also the final "
              "evaluation on the test set. Each uncached run ran right after its cached twin.", ""]
    rows = []
    for k in KS:
        on, off = cache_on[k]["greedy"], cache_off[k]["greedy"]
        rows.append([k, f"{cache_on[k]['wall_seconds']:.1f}", f"{cache_off[k]['wall_seconds']:.1f}",
                     f"{cache_off[k]['wall_seconds'] / cache_on[k]['wall_seconds']:.2f}×",
                     " / ".join(f"{v:.1f}" for v in on["stage_seconds"].values()),
                     " / ".join(f"{v:.1f}" for v in off["stage_seconds"].values())])
    lines.append(markdown_table(["k", "cached s", "not cached s", "slow-down without cache",
                                 "stage s, cached (block0/1/2)", "stage s, not cached"], rows))
    lines += ["", f"Whole script: {total / 60:.1f} minutes."]
    return "\n".join(lines)


def render_memory(memory, args) -> str:
    lines = ["## Greedy layerwise vs end-to-end: memory of one training step (Fashion-MNIST, batch 64)", "",
             "The networks and data of the section above (3-block `layerwise_cnn`, 16×16 inputs)."
             + (" **Quick smoke run.**" if args.quick else "")]
    lines += ["", "Method: the tensors autograd saves for the backward pass of one step, counted exactly with "
              "`torch.autograd.graph.saved_tensors_hooks` (each storage once), plus the trainable parameters, "
              "their gradients and SGD momentum (3 × trainable bytes). This is the part of the peak memory that "
              "depends on the training scheme; the data and the frozen weights are the same for both. A greedy "
              "stage keeps only the activations of one block and its head.", ""]
    rows = []
    for k in KS:
        for mode in MODES:
            for stage, saved, state in memory[(mode, k)]:
                rows.append([k, mode, stage, f"{saved / 2 ** 20:.2f}", f"{state / 2 ** 20:.3f}",
                             f"{(saved + state) / 2 ** 20:.2f}"])
    lines.append(markdown_table(["k", "scheme", "stage", "saved for backward MiB", "trainable state MiB",
                                 "total MiB"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
