"""Temperature against student size (Hinton et al. 2015, MNIST): "with 300 or more units per hidden layer
every T above 8 gives about the same result; with 30 units, T from 2.5 to 4 is clearly best".

    python benchmarks/bench_kd_temperature.py --work DIR   # DIR: a bench_kd.py --work folder (its teachers)
    python benchmarks/bench_kd_temperature.py --quick      # smoke run

Students 784-W-W-10 (W = 300 and 30) distilled at T = 1, 2.5, 4, 8, 20 from the teacher of each seed, and the
same students trained alone, 3 seeds. Everything else is bench_kd.py's, including the learning rates it chose
on validation for the 784-800-800-10 students (read from benchmarks/kd_mnist_last.json); nothing is chosen
here: this is a sweep, reported in full on the test split. Teachers found in ``--work`` (``teacher-seedN``)
are reused, missing ones are trained first. Writes the section kd-temperature of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_kd import RAW, budget, choose_lr, run_job, worker_pool  # noqa: E402
from benchmarks.results_doc import command_line, markdown_table, mean_std, write_section  # noqa: E402

WIDTHS = [300, 30]
TEMPERATURES = [1.0, 2.5, 4.0, 8.0, 20.0]
SWEEP_RAW = Path(__file__).resolve().parent / "kd_temperature_last.json"


def student_jobs(seeds: int, lr: dict, teachers: dict) -> list[dict]:
    """The students alone and distilled at every T, for every width and seed."""
    jobs = []
    for seed in range(seeds):
        for width in WIDTHS:
            jobs.append({"id": f"sweep-alone-w{width}-seed{seed}", "kind": "alone", "seed": seed, "lr": lr["alone"],
                         "selection": False, "width": width,
                         "extra": {"members.0.model_args.widths": [width, width]}})
            for temperature in TEMPERATURES:
                jobs.append({"id": f"sweep-distilled-w{width}-T{temperature:g}-seed{seed}", "kind": "distilled",
                             "seed": seed, "lr": lr["distilled"], "selection": False, "width": width,
                             "temperature": temperature, "teacher_dir": teachers[seed],
                             "extra": {"members.1.model_args.widths": [width, width],
                                       "distill.temperature": temperature}})
    return jobs


def run_pool(jobs: list[dict], plan: dict, work: Path, workers: int) -> list[dict]:
    with worker_pool(workers) as pool:
        results = list(pool.map(run_job, jobs, [plan] * len(jobs), [str(work)] * len(jobs)))
    failed = [r["id"] for r in results if "failed" in r]
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script end to end")
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training processes")
    parser.add_argument("--work", help="bench_kd.py's --work folder (teachers reused); default: a temporary one")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the section from a saved raw-results file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # every run here is single-threaded (also named in the hardware line)
    if args.render:
        write_section("kd-temperature", render(json.loads(Path(args.render).read_text())))
        return
    plan = budget(args.quick)
    chosen = json.loads(RAW.read_text())["runs"]
    lr = {kind: (0.05 if args.quick else choose_lr(chosen, kind)) for kind in ("teacher", "alone", "distilled")}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        teachers = run_pool([{"id": f"teacher-seed{s}", "kind": "teacher", "seed": s, "lr": lr["teacher"],
                              "selection": False} for s in range(plan["seeds"])], plan, work, args.workers)
        teacher_dirs = {t["seed"]: t["run_dir"] for t in teachers}
        students = run_pool(student_jobs(plan["seeds"], lr, teacher_dirs), plan, work, args.workers)
    strip = ("run_dir", "teacher_dir", "extra")
    raw = {"quick": args.quick, "plan": plan, "lr": lr, "workers": args.workers, "command": command_line(),
           "wall_seconds": time.perf_counter() - began,
           "teachers": [{k: v for k, v in t.items() if k not in strip} for t in teachers],
           "runs": [{k: v for k, v in r.items() if k not in strip} for r in students]}
    if not args.quick:
        SWEEP_RAW.write_text(json.dumps(raw, indent=1))
    write_section("kd-temperature", render(raw))


def render(raw: dict) -> str:
    """The kd-temperature section of docs/results.md from the raw numbers of one sweep."""
    plan, runs, lr = raw["plan"], raw["runs"], raw["lr"]
    tag = " (QUICK SMOKE RUN: not a result)" if raw["quick"] else ""

    def errors(width, temperature=None):
        kind = "alone" if temperature is None else "distilled"
        return [r["errors"] for r in runs if r["kind"] == kind and r["width"] == width
                and r.get("temperature") == temperature]

    rows, best = [], {}
    for width in WIDTHS:
        means = {t: statistics.mean(errors(width, t)) for t in TEMPERATURES}
        best[width] = min(means, key=means.get)
        rows.append([f"784-{width}-{width}-10", mean_std(errors(width), digits=1)]
                    + [mean_std(errors(width, t), digits=1) for t in TEMPERATURES])
    teachers = [t["errors"] for t in raw["teachers"]]
    reused = [r for r in runs if r.get("reused")]

    def band(width, low):
        return statistics.mean(e for t in TEMPERATURES if (1 < t <= 4 if low else t >= 8) for e in errors(width, t))

    return (
        f"## Distillation temperature against student size (MNIST){tag}\n\n"
        f"Hinton et al. report that students with 300 or more units per hidden layer do about equally well at "
        f"every T above 8, while students with 30 units do clearly best at T = 2.5–4. Here: students "
        f"784-W-W-10 distilled (α = 0.1, the kd-mnist settings: {runs[0]['train_size']:,} training images, "
        f"{plan['student_epochs']} epochs, lr {lr['distilled']:g}) from the teacher of each seed "
        f"({mean_std(teachers, digits=1)} test errors"
        + ("; the kd-mnist run's teachers, reused" if all(t.get("reused") for t in raw["teachers"]) else "")
        + f"), and the same students trained alone (lr {lr['alone']:g}); "
        f"{len(raw['teachers'])} seeds. The learning rates are those chosen on validation for the 800-unit "
        f"students of the kd-mnist section; nothing was tuned for this sweep, which is reported in full. "
        f"The {len(runs)} student runs took {sum(r['seconds'] for r in runs) / 60:.0f} core-minutes, run as "
        f"{raw['workers']} single-threaded processes side by side"
        + (f" ({len(reused)} of them reused from an earlier invocation on the same `--work` folder, counted with "
           f"their own time; this invocation took {raw['wall_seconds'] / 60:.1f} minutes)" if reused else
           f" ({raw['wall_seconds'] / 60:.1f} minutes in all)")
        + ".\n\n"
        "Test **errors** out of 10,000 (mean ± std over seeds):\n\n"
        + markdown_table(["student", "alone"] + [f"T = {t:g}" for t in TEMPERATURES], rows)
        + "\n\nLowest mean error: " + "; ".join(f"{w} units at T = {best[w]:g}" for w in WIDTHS) + ". "
        + "; ".join(f"{w} units: T = 2.5–4 averages {band(w, low=True):.1f} errors, T = 8–20 "
                    f"{band(w, low=False):.1f}" for w in WIDTHS) + " (mean over the seeds and the band's "
        "temperatures).\n\n"
        f"Raw numbers: `benchmarks/kd_temperature_last.json`; the run was `{raw['command']}`.")


if __name__ == "__main__":
    main()
