"""Every distillation method of the distill recipe on one task, one teacher, one student and one budget.

    python benchmarks/bench_kd_methods.py                 # selection + 3 seeds, about 10 minutes on 2 cores
    python benchmarks/bench_kd_methods.py --quick         # smoke run of the whole script (a minute or two)

Task: MNIST at 14×14 (downscaled: 4 times cheaper convolutions), 2,000 training images (stratified), 1,000
validation images, the 10,000 test images. Teacher: ``small_cnn`` width 32 with ±1-pixel jitter, 30 epochs,
trained once (seed 0), saved in the ``--work`` folder and loaded frozen by every student run. Student:
``small_cnn`` width 4 (about 40 times fewer weights than the teacher), no augmentation, 30 epochs, SGD Nesterov
lr 0.05, weight decay 5e-4, cosine. Chosen because distillation clearly helps there (a one-seed check before this
benchmark: student alone 93.9 %, KD 95.6 %, teacher 98.1 %), with a budget that fits 2 cores: the
student is small and data-starved, so the teacher's soft targets carry information its 2,000 labels do not.

Every method starts from its paper's settings (``distill.method`` defaults: weights, temperatures, layers; CRD
the authors' critic), except what depends on the schedule's length: DKD's warm-up is scaled from 20 of 240 epochs
to 2.5 of 30. CRD keeps the paper's K = 16384 negatives although the bank holds 2,000 items (drawn with
replacement). Two phases:

1. *Selection* (seed 100, the validation split only): every method at three strengths of its distillation term,
   the paper's and one and two tenths of it (s = 1, 0.1, 0.01): ``distill.weight`` = s · the paper's weight, and
   for kd and mse, whose term is weighted by 1 − α, α = 1 − 0.9 · s (the paper's α = 0.1 at s = 1). The paper
   weights were chosen for ResNets on CIFAR's 32×32 … 8×8 maps; this student is 40 times smaller and its maps
   are 7×7 and 3×3, so each method gets the same small search. The strength with the best validation top-1
   is kept (ties: the stronger).
2. *Seeds 0, 1, 2* (the student's initial weights and batch order; the teacher is the same): the student alone
   (CE) and every method at its chosen strength.

Each run is one fresh single-threaded process (``--workers`` side by side), whose peak resident memory is
reported. Step times are measured after the runs, in one process, interleaved, relative to the KD step.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peerlearn  # noqa: E402
from benchmarks.results_doc import command_line, markdown_table, mean_std, write_section  # noqa: E402
from benchmarks.timing import median_step_seconds  # noqa: E402
from peerlearn.api import prepare_run  # noqa: E402
from peerlearn.config import load_config  # noqa: E402
from peerlearn.losses import FEATURE_LOSS_WEIGHTS  # noqa: E402

RAW = Path(__file__).resolve().parent / "kd_methods_last.json"
METHODS = ("kd", "mse", "fitnets", "at", "sp", "rkd", "pkt", "crd", "dkd", "dist")
# CIFAR-100, resnet32x4 -> resnet8x4 (RepDistiller's and mdistiller's tables), for the ordering only
SCALES = (1.0, 0.1, 0.01)  # strengths of the distillation term tried in the selection phase
SELECTION_SEED = 100
PUBLISHED = {"kd": 73.33, "fitnets": 73.50, "at": 73.44, "rkd": 71.90, "crd": 75.51, "dkd": 76.32}


def budget(quick: bool) -> dict:
    if quick:
        return {"subset": 500, "val": 200, "teacher_epochs": 2, "epochs": 2, "seeds": 1, "image_size": 14,
                "scales": [1.0, 0.1]}
    return {"subset": 2000, "val": 1000, "teacher_epochs": 30, "epochs": 30, "seeds": 3, "image_size": 14,
            "scales": list(SCALES)}


def base_config(plan: dict, seed: int) -> dict:
    return {"seed": seed, "tracking": {"tensorboard": False},
            "data": {"source": "mnist", "image_size": plan["image_size"], "train_subset": plan["subset"],
                     "val_size": plan["val"], "batch_size": 64},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {"epochs": plan["epochs"], "progress": "off", "threads": 1, "eval_every": plan["epochs"]}}


TEACHER = {"name": "teacher", "model": "small_cnn", "model_args": {"width": 32}}
STUDENT = {"name": "student", "model": "small_cnn", "model_args": {"width": 4}}


def teacher_config(plan: dict) -> dict:
    config = base_config(plan, 0)
    config["data"]["augment"] = {"jitter": 1}
    config["train"] = {**config["train"], "epochs": plan["teacher_epochs"], "eval_every": plan["teacher_epochs"]}
    return {**config, "name": "methods-teacher", "recipe": "independent", "members": [TEACHER]}


def strength(method: str, scale: float) -> dict:
    """The distill settings of strength ``scale`` (1: the paper's): α = 1 − 0.9 · s for kd and mse (their term's
    weight is 1 − α), else distill.weight = s · the paper's weight."""
    if method in ("kd", "mse"):
        return {"alpha": round(1 - 0.9 * scale, 6)}
    return {"weight": scale * FEATURE_LOSS_WEIGHTS[method]}


def student_config(plan: dict, method: str, seed: int, teacher_dir: str, scale: float = 1.0) -> dict:
    config = base_config(plan, seed)
    if method == "alone":
        return {**config, "name": "alone", "recipe": "independent", "members": [STUDENT]}
    distill = {"method": method, **strength(method, scale)}
    if method == "dkd":  # the paper ramps DKD in over 20 of its 240 epochs
        distill["dkd"] = {"warmup_epochs": plan["epochs"] * 20 / 240}
    return {**config, "name": method, "recipe": "distill", "distill": distill,
            "members": [{**TEACHER, "trainable": False, "weights": teacher_dir}, STUDENT]}


def finished_run(folder: Path) -> Path | None:
    done = sorted(p.parent for p in folder.glob("*/summary.json"))
    return done[-1] if done else None


def run_job(job: dict, plan: dict, work: str) -> dict:
    """One training run in a fresh worker process; its numbers and the process's peak memory."""
    torch.set_num_threads(1)
    folder = Path(work) / job["id"]
    previous = finished_run(folder)
    if previous is not None:
        summary, run_dir = json.loads((previous / "summary.json").read_text()), previous
        peak = job.get("peak_mb")
    else:
        config = (teacher_config(plan) if job["method"] == "teacher"
                  else student_config(plan, job["method"], job["seed"], job["teacher_dir"], job.get("scale", 1.0)))
        result = peerlearn.train(config, out=folder)
        summary, run_dir = result.summary, result.run_dir
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        (run_dir / "peak_mb.json").write_text(json.dumps(peak))
    if peak is None and (run_dir / "peak_mb.json").is_file():
        peak = json.loads((run_dir / "peak_mb.json").read_text())
    member = "teacher" if job["method"] == "teacher" else "student"
    out = {**job, "run_dir": str(run_dir), "seconds": summary["wall_seconds"], "reused": previous is not None,
           "test_top1": summary["members"][member]["test"]["top1"], "val_top1": summary["members"][member]["val"]["top1"],
           "peak_mb": peak, "distill": {k: v for k, v in summary.get("distill", {}).items()
                                        if k in ("connectors", "teacher_cache", "teacher_cache_reason", "layers",
                                                 "weight")}}
    if job.get("phase") == "selection":  # the choice reads validation only: its runs' test scores are dropped
        del out["test_top1"]
    scores = f"test {out['test_top1']:.4f}" if "test_top1" in out else f"val {out['val_top1']:.4f}"
    print(f"{job['id']}: {scores}, {out['seconds']:.0f} s, peak {peak:.0f} MB", flush=True)
    return out


def run_all(plan: dict, work: Path, workers: int) -> list[dict]:
    """The teacher, then the selection phase (seed 100, every method at every strength), then the seeds at each
    method's chosen strength; run ids name the strength, so that ``--work`` reuses only identical runs."""
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        teacher = pool.submit(run_job, {"id": "teacher", "method": "teacher", "seed": 0}, plan, str(work)).result()

        def job(method, seed, scale, phase):
            return {"id": f"{method}-s{scale:g}-seed{seed}" if method != "alone" else f"alone-seed{seed}",
                    "method": method, "seed": seed, "scale": scale, "phase": phase, "teacher_dir": teacher["run_dir"]}

        selection = [job(m, SELECTION_SEED, scale, "selection") for m in METHODS for scale in plan["scales"]]
        chosen_runs = list(pool.map(run_job, selection, [plan] * len(selection), [str(work)] * len(selection)))
        chosen = choose_scales(chosen_runs)
        jobs = [job(m, seed, chosen.get(m, 1.0), "seeds") for seed in range(plan["seeds"]) for m in ("alone", *METHODS)]
        results = list(pool.map(run_job, jobs, [plan] * len(jobs), [str(work)] * len(jobs)))
    return [teacher, *chosen_runs, *results]


def choose_scales(selection: list[dict]) -> dict[str, float]:
    """Per method, the strength with the best validation top-1 at the selection seed (ties: the stronger)."""
    best: dict[str, dict] = {}
    for run in selection:
        kept = best.get(run["method"])
        if kept is None or (run["val_top1"], run["scale"]) > (kept["val_top1"], kept["scale"]):
            best[run["method"]] = run
    return {m: r["scale"] for m, r in best.items()}


def step_times(plan: dict, teacher_dir: str, quick: bool, rounds: int = 3) -> dict:
    """Median seconds per training step of each method (cached teacher outputs where the method allows)."""
    steps, repeats = (5, 1) if quick else (20, 3)
    times: dict[str, list[float]] = {m: [] for m in ("alone", *METHODS)}
    for _ in range(1 if quick else rounds):  # interleaved, so that machine noise hits every method alike
        for method in times:
            _, _, recipe = prepare_run(load_config(student_config(plan, method, 0, teacher_dir)))
            stage = recipe.stages()[-1]
            if stage.start is not None:
                stage.start()
            times[method].append(median_step_seconds(recipe, steps, repeats))
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training processes")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one); finished runs are reused")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the section from a saved raw-results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.render:
        write_section("kd-methods", render(json.loads(Path(args.render).read_text())))
        return
    plan = budget(args.quick)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        results = run_all(plan, work, args.workers)
        jobs_wall = time.perf_counter() - began
        timing = step_times(plan, results[0]["run_dir"], args.quick)
    raw = {"quick": args.quick, "plan": plan, "workers": args.workers, "jobs_wall_seconds": jobs_wall,
           "wall_seconds": time.perf_counter() - began, "command": command_line(), "timing": timing,
           "runs": [{k: v for k, v in r.items() if k not in ("run_dir", "teacher_dir")} for r in results]}
    if not args.quick:
        RAW.write_text(json.dumps(raw, indent=1))
    write_section("kd-methods", render(raw))


def render(raw: dict) -> str:
    """The kd-methods section of docs/results.md from the raw numbers of one run of this script."""
    plan, runs, timing = raw["plan"], raw["runs"], raw["timing"]
    tag = " (QUICK SMOKE RUN: not a result)" if raw["quick"] else ""
    teacher = next(r for r in runs if r["method"] == "teacher")
    by = {m: sorted((r for r in runs if r["method"] == m and r.get("phase", "seeds") == "seeds"),
                    key=lambda r: r["seed"]) for m in ("alone", *METHODS)}
    selection = {m: {r["scale"]: r["val_top1"] for r in runs if r["method"] == m and r.get("phase") == "selection"}
                 for m in METHODS}
    scales = plan.get("scales", [1.0])

    def top1(method):
        return [100 * r["test_top1"] for r in by[method]]

    kd_mean = statistics.mean(top1("kd"))
    rows = []
    for method in ("alone", *METHODS):
        peaks = [r["peak_mb"] for r in by[method] if r.get("peak_mb")]
        connectors = by[method][0]["distill"].get("connectors", {})
        bank = sum(c["bank_bytes"] for c in connectors.values()) / 2**20
        chosen = by[method][0].get("scale", 1.0)
        tried = " / ".join(f"{100 * selection[method][x]:.1f}" if x in selection.get(method, {}) else "—"
                           for x in scales) if method != "alone" else "—"
        rows.append([method if method != "alone" else "student alone (CE)",
                     f"s = {chosen:g} ({strength_text(method, chosen)})" if method != "alone" else "—", tried,
                     mean_std(top1(method)),
                     f"{statistics.mean(top1(method)) - kd_mean:+.2f}" if method != "kd" else "0",
                     f"{timing[method] / timing['kd']:.2f}", f"{statistics.mean(peaks):.0f}" if peaks else "—",
                     f"{bank:.1f}" if bank else "—", f"{PUBLISHED[method]:.2f}" if method in PUBLISHED else "—"])
    ours = sorted((m for m in PUBLISHED), key=lambda m: -statistics.mean(top1(m)))
    published = sorted(PUBLISHED, key=lambda m: -PUBLISHED[m])
    core_minutes = sum(r["seconds"] for r in runs) / 60
    seeds = len(by["kd"])
    gap = statistics.mean(top1("kd")) - statistics.mean(top1("alone"))
    return (
        f"## Distillation methods side by side (MNIST 14×14, 2,000 images){tag}\n\n"
        f"**Task and budget.** MNIST downscaled to {plan['image_size']}×{plan['image_size']}, {plan['subset']:,} "
        f"training images (stratified), {plan['val']:,} validation images, the 10,000 test images. One teacher "
        f"(`small_cnn` width 32, ±1-pixel jitter, {plan['teacher_epochs']} epochs, seed 0: "
        f"{100 * teacher['test_top1']:.2f} % test top-1), trained once and loaded frozen by every student run. Student: "
        f"`small_cnn` width 4, no augmentation, {plan['epochs']} epochs, SGD Nesterov lr 0.05, weight decay 5e-4, "
        f"cosine, batch 64; {seeds} seeds (the student's initialisation and batch order). Chosen because KD helps "
        f"clearly there: {gap:+.2f} points over the student alone, here. Every method starts from its paper's "
        "settings (`distill.method` defaults: weights, temperatures, default layers; CRD with the authors' critic), "
        f"DKD's warm-up scaled to {plan['epochs'] * 20 / 240:g} of {plan['epochs']} epochs (the paper: 20 of 240). "
        "**One choice per method, on validation:** the strength s of its distillation term, from "
        f"{', '.join(f'{x:g}' for x in scales)} times the paper's (`distill.weight` = s · the paper's weight; "
        f"for kd and mse α = 1 − 0.9 · s), at seed 100, by validation top-1 ({plan['val']:,} images); the selection "
        "runs' test scores are not recorded. The paper weights were chosen for ResNets on CIFAR-100's 32×32 to 8×8 maps; "
        "this student is 40 times smaller and its maps are 7×7 and 3×3, which is why each method gets the same "
        f"small search. The {len(runs)} runs took {core_minutes:.0f} core-minutes, as {raw['workers']} "
        f"single-threaded processes side by side ({raw['wall_seconds'] / 60:.1f} minutes for the whole script).\n\n"
        + markdown_table(["method", "strength chosen on validation",
                          f"validation top-1 % at s = {' / '.join(f'{x:g}' for x in scales)} (seed 100)",
                          "student test top-1 % (mean ± std)", "vs KD (points)", "time / step vs KD",
                          "peak memory of the run (MB)", "CRD memory banks (MB)",
                          "published CIFAR-100 top-1 (resnet32x4 → resnet8x4)"], rows)
        + "\n\n*Time / step*: median seconds per training step (one thread, teachers' outputs cached where the method "
        "allows; 3 interleaved rounds of the median of 3 timings of 20 steps), divided by KD's. KD's and MSE's steps differ only in a softmax and a KL over [64, 10] logits, so a large gap between them (here in the table) is noise of the shared 2-core machine, not a cost: read the column as a rough guide, rerun it for exact ratios. *Peak memory*: the "
        "peak resident memory of the run's process (it holds the data, both networks and the caches); CRD's "
        "banks hold 2 × 2,000 × 128 float32 values.\n\n"
        f"**Ordering.** The published CIFAR-100 ordering of the methods both tables have is "
        f"{' > '.join(published)}; here it is {' > '.join(ours)}. "
        + ordering_comment(plan, by, top1, selection)
        + "\n\nRaw numbers: `benchmarks/kd_methods_last.json`; `python benchmarks/bench_kd_methods.py --render "
        f"benchmarks/kd_methods_last.json` rewrites this section from them; the run was `{raw['command']}`.")


def strength_text(method: str, scale: float) -> str:
    """The setting a strength stands for, e.g. ``α = 0.91`` or ``w = 50``."""
    setting = strength(method, scale)
    return f"α = {setting['alpha']:g}" if "alpha" in setting else f"w = {setting['weight']:g}"


def ordering_comment(plan, by, top1, selection) -> str:
    """What differs from the published ordering, in words computed from the numbers."""
    kd = statistics.mean(top1("kd"))
    better = [m for m in METHODS if m != "kd" and statistics.mean(top1(m)) > kd]
    worse_than_alone = [m for m in METHODS if statistics.mean(top1(m)) < statistics.mean(top1("alone"))]
    collapsed = [m for m in METHODS if min(top1(m)) < 80]
    weaker = [m for m in METHODS if by[m][0].get("scale", 1.0) != 1.0]
    paper_collapsed = [m for m in METHODS if selection.get(m, {}).get(1.0, 1.0) < 0.8]
    text = (f"Methods above KD here: {', '.join(better) or 'none'}. "
            f"Methods below the student trained alone: {', '.join(worse_than_alone) or 'none'}. "
            f"Methods with at least one seed under 80 % test top-1: {', '.join(collapsed) or 'none'}. "
            f"Validation chose a weaker term than the paper's for: {', '.join(weaker) or 'none'}. "
            + (f"At the paper's weight, the selection run of {', '.join(paper_collapsed)} ended under 80 % "
               "validation top-1: the term outweighs the cross-entropy of this small student. " if paper_collapsed
               else "No selection run at the paper's weight ended under 80 % validation top-1. "))
    return text + ("The published numbers come from 240 epochs of ResNets on CIFAR-100, with lr schedules and "
                   f"weights tuned there; here the student has 4 channels, {plan['epochs']} epochs and "
                   f"{plan['subset']:,} labels, so the "
                   "ordering is a statement about this budget, not about the methods at their tuned settings. "
                   "Differences of less than about two standard deviations are not an ordering.")


if __name__ == "__main__":
    main()
