"""Deep Mutual Learning on Fashion-MNIST: accuracy, posterior entropy, flatness, semi-supervision, speed.

    python benchmarks/bench_dml.py            # full: 3 seeds (about 30 minutes on 2 CPU cores)
    python benchmarks/bench_dml.py --quick    # a smoke run of the whole script (about 2 minutes)

Writes the sections dml-fmnist, dml-semisup and dml-speed of docs/results.md. Test accuracy is taken
at the end of training (no selection on test); the configs were fixed beforehand on the validation split.
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
from peerlearn.analysis_runner import analysis_stream  # noqa: E402
from peerlearn.api import prepare_run  # noqa: E402
from peerlearn.config import load_config  # noqa: E402
from peerlearn.engine.cohort import preserved_batchnorm_stats  # noqa: E402
from peerlearn.evaluate.analyses import cohort_flatness, posterior_entropy, rank_mass  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIGMAS = (0.0, 0.01, 0.02, 0.04)

VARIANTS = {
    "independent (K=2)": ("fmnist_independent_pair.yaml", {}),
    "DML simultaneous (K=2)": ("fmnist_dml_pair.yaml", {}),
    "DML sequential (K=2)": ("fmnist_dml_pair.yaml", {"mutual.update": "sequential"}),
    "DML_e (K=3)": ("fmnist_dml_e_k3.yaml", {}),
}

SEMI = {
    "single network": ("fmnist_semisup_dml.yaml", {"recipe": "independent", "mutual": None, "members": [
        {"name": "a", "model": "small_cnn", "model_args": {"width": 16}}]}),
    "DML-labelled": ("fmnist_semisup_dml.yaml", {"mutual.mimic_on": "labelled"}),
    "DML-all": ("fmnist_semisup_dml.yaml", {"mutual.mimic_on": "all"}),
}


def run(config_name: str, overrides: dict, seed: int, out: Path, quick: bool):
    extra = {"seed": seed, "train.progress": "off", "tracking.tensorboard": False}
    if quick:
        extra.update({"train.epochs": 2, "data.train_subset": 600})
    return peerlearn.train(CONFIGS / config_name, out=out, **{**overrides, **extra})


def analyse(result, quick: bool) -> dict:
    stream = analysis_stream(result.recipe, "train", limit=600 if quick else None)
    names = list(result.summary["members"])
    return {"entropy": posterior_entropy(result.cohort, stream, names),
            "rank1": {n: m[0] for n, m in rank_mass(result.cohort, stream, names).items()},
            "flatness": cohort_flatness(result.cohort, stream, SIGMAS, draws=2 if quick else 3, seed=0, names=names)}


def accuracy_table(variants: dict, seeds: list[int], out: Path, quick: bool, with_analyses: bool):
    rows, flat_rows = [], []
    for label, (config_name, overrides) in variants.items():
        member_acc, best_acc, ensemble_acc, entropies, rank1, train_acc, seconds = [], [], [], [], [], [], []
        curves: dict[float, list[float]] = {s: [] for s in SIGMAS}
        for seed in seeds:
            started = time.perf_counter()
            result = run(config_name, overrides, seed, out, quick)
            seconds.append(time.perf_counter() - started)
            accs = list(result.member_accuracy("test").values())
            member_acc.append(statistics.mean(accs))
            best_acc.append(max(accs))
            if result.summary["ensemble"]:
                ensemble_acc.append(result.summary["ensemble"]["test"]["top1"])
            if with_analyses:
                found = analyse(result, quick)
                entropies.append(statistics.mean(found["entropy"].values()))
                rank1.append(statistics.mean(found["rank1"].values()))
                for sigma in SIGMAS:
                    curves[sigma].append(statistics.mean(c[sigma]["mean"] for c in found["flatness"].values()))
                from peerlearn.engine.evaluation import evaluate_cohort
                scores = evaluate_cohort(result.cohort, analysis_stream(result.recipe, "train"),
                                         result.summary["members"])
                train_acc.append(statistics.mean(s["top1"] for n, s in scores.items() if n != "ensemble"))
        row = [label, mean_std(member_acc, 100), mean_std(best_acc, 100),
               mean_std(ensemble_acc, 100) if ensemble_acc else "—"]
        if with_analyses:
            row += [mean_std(train_acc, 100), mean_std(entropies, 1, 4), mean_std(rank1, 1, 4)]
            flat_rows.append([label] + [mean_std(curves[s], 1, 4) for s in SIGMAS])
        row.append(f"{statistics.mean(seconds):.0f}")
        rows.append(row)
        print(label, row, flush=True)
    return rows, flat_rows


def prepared_recipe(config, steps: int):
    """A ready recipe in training mode and ``steps`` fixed batches to time it on."""
    _, _, recipe = prepare_run(config)
    recipe.cohort.train()
    batches = [b for _, b in zip(range(steps), (b for _, b in recipe.train_stream.epoch(0)))]
    for batch in batches[:3]:  # warm-up
        recipe.step(batch)
    return recipe, batches


def seconds_per_step(recipe, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        recipe.step(batch)
    return (time.perf_counter() - started) / len(batches)


def refresh_forward_seconds(recipe, batches) -> float:
    """Seconds of one member's prediction refresh (train-mode forward without grad), per step."""
    member = recipe.cohort.trainable[0]
    started = time.perf_counter()
    for batch in batches:
        with torch.no_grad(), preserved_batchnorm_stats(member.model):
            member.model(batch.x)
    return (time.perf_counter() - started) / len(batches)


def speed_rows(quick: bool, threads: int) -> list[list[str]]:
    """Step times of independent / DML simultaneous / DML sequential, measured round-robin in one process.

    The three recipes take turns, one pass over the same batches each, for many rounds; each recipe's time is
    the minimum over rounds, the estimate least disturbed by other work on the machine.
    """
    rows = []
    steps, rounds = (5, 3) if quick else (20, 15)
    for k in (2, 4):
        base = {"data": {"source": "fashion_mnist", "train_subset": 2000, "val_fraction": 0.0, "image_size": 14,
                         "batch_size": 64},
                "members": [{"name": f"m{i}", "model": "small_cnn", "model_args": {"width": 16}} for i in range(k)],
                "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "train": {"threads": threads},
                "tracking": {"tensorboard": False}}
        recipes = {
            "independent": prepared_recipe(load_config({**base, "recipe": "independent"}), steps),
            "simultaneous": prepared_recipe(load_config({**base, "recipe": "mutual"}), steps),
            "sequential": prepared_recipe(load_config({**base, "recipe": "mutual",
                                                       "mutual": {"update": "sequential"}}), steps),
        }
        times: dict[str, list[float]] = {name: [] for name in recipes}
        for _ in range(rounds):
            for name, (recipe, batches) in recipes.items():
                times[name].append(seconds_per_step(recipe, batches))
        ind, sim, seq = (min(times[n]) for n in ("independent", "simultaneous", "sequential"))
        forward = min(refresh_forward_seconds(*recipes["sequential"]) for _ in range(rounds))
        floor = (sim + (k - 1) * forward) / sim  # Algorithm 1 needs K−1 extra forwards per step
        rows.append([str(k), f"{ind * 1000:.1f}", f"{sim * 1000:.1f}", f"{seq * 1000:.1f}",
                     f"{sim / ind:.3f}", f"{seq / sim:.3f}", f"{forward * 1000:.1f}", f"{floor:.3f}"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=["accuracy", "semisup", "speed"], action="append")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = list(range(1 if args.quick else args.seeds))
    parts = args.only or ["accuracy", "semisup", "speed"]
    tag = " (QUICK SMOKE RUN: not a result)" if args.quick else ""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "accuracy" in parts:
            rows, flat = accuracy_table(VARIANTS, seeds, out, args.quick, with_analyses=True)
            body = (
                f"## Deep Mutual Learning on Fashion-MNIST{tag}\n\n"
                "Small CNNs (`small_cnn`, width 16, BatchNorm) on a 2,000-image stratified subset of Fashion-MNIST "
                "(1,800 train / 200 validation), images resized to 14×14, SGD Nesterov lr 0.05, cosine schedule, 30 "
                "epochs, batch 64 (configs `configs/fmnist_*.yaml`). The networks fit their training data, the regime "
                "where the paper's effect lives. Test accuracy on the official 10,000 test images at the end of "
                f"training, mean ± std over {len(seeds)} seeds. *member* = mean accuracy of the cohort's members, "
                "*best* = best member, *ensemble* = mean of the members' probabilities. Entropy and rank-1 mass: "
                "mean posterior entropy (nats) and mean top probability on the training images. With KL mimicry, DML_e "
                "and DML train identically: the gradient of KL(q ‖ softmax(z)) with respect to z is softmax(z) − q, "
                "linear in q, so the mean of the peers' KL terms and the KL to the peers' mean probabilities give the "
                "same gradient (`tests/test_losses_mutual.py` checks it); the DML_e row is therefore also the K=3 DML "
                "row.\n\n"
                + markdown_table(["cohort", "test top-1 % (member)", "best member", "ensemble", "train top-1 %",
                                  "train entropy", "rank-1 mass", "seconds / run"], rows)
                + "\n\nFlatness (mean training loss of the members after adding N(0, σ²) noise to every parameter; "
                "3 draws per σ; a slower rise means a wider minimum):\n\n"
                + markdown_table(["cohort"] + [f"σ = {s:g}" for s in SIGMAS], flat))
            write_section("dml-fmnist", body)
        if "semisup" in parts:
            rows, _ = accuracy_table(SEMI, seeds, out, args.quick, with_analyses=False)
            body = (
                f"## Semi-supervised DML, 10% labels{tag}\n\n"
                "Same data and models as above (`configs/fmnist_semisup_dml.yaml`), with the labels of 90% of the "
                "training images hidden (stratified, seeded). *single network*: one CNN, CE on the labelled 10%. "
                "*DML-labelled*: two CNNs, CE and mimicry on labelled images only. *DML-all*: CE on labelled, "
                f"mimicry on all training images. Test top-1 %, mean ± std over {len(seeds)} seeds.\n\n"
                + markdown_table(["method", "test top-1 % (member)", "best member", "ensemble", "seconds / run"], rows))
            write_section("dml-semisup", body)
        if "speed" in parts:
            rows = speed_rows(args.quick, args.threads)
            body = (
                f"## DML step time{tag}\n\n"
                "Seconds per training step measured in one process: after a warm-up the three recipes take turns, one "
                "pass over the same 20 batches each, for 15 rounds, and each keeps its fastest round (the machine was "
                "shared with other jobs; the minimum is the estimate they disturb least): K small CNNs (width 16) on 14×14 Fashion-MNIST batches of 64. "
                "*independent* = K members each doing its own CE step on the same batch. Goals: DML simultaneous / "
                "independent ≤ 1.03, sequential / simultaneous ≤ 1.25.\n\n"
                + "Sequential DML (Algorithm 1) refreshes each updated member's predictions before the next member "
                "steps: K−1 extra forward passes per step that simultaneous DML does not need. *refresh ms* is one "
                "such forward, measured alone; *sequential floor* = (simultaneous + (K−1) · refresh) / simultaneous "
                "is the ratio that the algorithm itself implies on this hardware, which the measured sequential / "
                "simultaneous ratio should be compared with.\n\n"
                + markdown_table(["K", "independent ms", "DML simultaneous ms", "DML sequential ms",
                                  "simultaneous / independent", "sequential / simultaneous", "refresh ms",
                                  "sequential floor"], rows))
            write_section("dml-speed", body)


if __name__ == "__main__":
    main()
