"""The KD benchmark's selection and job ordering (pure logic: no training here)."""

import pytest

from benchmarks import bench_kd

PLAN = {"subset": 2000, "teacher_epochs": 1, "student_epochs": 1, "seeds": 2, "teacher_lr_grid": [0.02, 0.05],
        "lr_grid": [0.01, 0.02, 0.05]}


def selection_result(kind, lr, val=None, failed=False):
    run = {"id": f"select-{kind}-seed100-lr{lr:g}", "kind": kind, "seed": 100, "lr": lr, "selection": True}
    return {**run, "failed": "non-finite loss"} if failed else {**run, "val_top1": val}


def test_choose_lr_takes_best_validation_skips_failed_and_breaks_ties_to_the_smaller_lr():
    results = [selection_result("distilled", 0.01, 0.97), selection_result("distilled", 0.02, 0.98),
               selection_result("distilled", 0.05, failed=True), selection_result("alone", 0.01, 0.96),
               selection_result("alone", 0.02, 0.96), selection_result("alone", 0.05, 0.95)]
    assert bench_kd.choose_lr(results, "distilled") == 0.02
    assert bench_kd.choose_lr(results, "alone") == 0.01


def test_choose_lr_stops_when_every_lr_failed():
    with pytest.raises(SystemExit, match="every selection run of the alone student failed"):
        bench_kd.choose_lr([selection_result("alone", 0.01, failed=True)], "alone")


def test_jobs_cover_selection_grid_and_seeds_once():
    jobs = bench_kd.jobs(PLAN)
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids))
    selection = [j for j in jobs if j["selection"]]
    assert {(j["kind"], j["lr"]) for j in selection} == {
        (kind, lr) for kind in ("alone", "distilled") for lr in PLAN["lr_grid"]} | {
        ("teacher", lr) for lr in PLAN["teacher_lr_grid"]}
    assert {j["seed"] for j in selection} == {bench_kd.SELECTION_SEED}
    final = [j for j in jobs if not j["selection"]]
    assert sorted((j["kind"], j["seed"]) for j in final) == sorted(
        (kind, seed) for kind in ("teacher", "alone", "distilled", "omit3") for seed in range(PLAN["seeds"]))
    assert all(j["lr"] is None for j in final)  # chosen later, from the selection runs


def test_every_run_waits_for_the_lr_it_needs_and_its_teacher():
    jobs = {j["id"]: j for j in bench_kd.jobs(PLAN)}
    done = {"select-teacher-seed100-lr0.02": selection_result("teacher", 0.02, 0.985) | {"run_dir": "/runs/sel2"}}
    assert bench_kd.ready(jobs["select-distilled-seed100-lr0.02"], done, PLAN) is None  # teacher grid unfinished
    assert bench_kd.ready(jobs["teacher-seed0"], done, PLAN) is None
    assert bench_kd.ready(jobs["select-alone-seed100-lr0.05"], {}, PLAN) == jobs["select-alone-seed100-lr0.05"]
    done["select-teacher-seed100-lr0.05"] = selection_result("teacher", 0.05, 0.980) | {"run_dir": "/runs/sel5"}
    distilled_selection = bench_kd.ready(jobs["select-distilled-seed100-lr0.02"], done, PLAN)
    assert distilled_selection["teacher_dir"] == "/runs/sel2"  # taught by the best selection teacher
    assert distilled_selection["lr"] == 0.02
    assert bench_kd.ready(jobs["teacher-seed1"], done, PLAN)["lr"] == 0.02
    assert bench_kd.ready(jobs["distilled-seed1"], done, PLAN) is None  # no teacher of seed 1 yet
    done["teacher-seed1"] = {**jobs["teacher-seed1"], "lr": 0.02, "run_dir": "/runs/t1"}
    assert bench_kd.ready(jobs["distilled-seed1"], done, PLAN) is None  # the students' lr grid is unfinished
    for lr, val in zip(PLAN["lr_grid"], (0.97, 0.98, 0.96)):
        done[f"select-distilled-seed100-lr{lr:g}"] = selection_result("distilled", lr, val)
    ready = bench_kd.ready(jobs["omit3-seed1"], done, PLAN)
    assert ready["teacher_dir"] == "/runs/t1" and ready["lr"] == 0.02
    assert bench_kd.ready(jobs["alone-seed0"], done, PLAN) is None  # its own grid is still running


def test_temperature_sweep_covers_every_width_and_temperature_with_each_seeds_teacher():
    from benchmarks import bench_kd_temperature as sweep

    jobs = sweep.student_jobs(2, {"alone": 0.05, "distilled": 0.01}, {0: "/runs/t0", 1: "/runs/t1"})
    assert len({j["id"] for j in jobs}) == len(jobs) == 2 * len(sweep.WIDTHS) * (1 + len(sweep.TEMPERATURES))
    distilled = [j for j in jobs if j["kind"] == "distilled"]
    assert all(j["teacher_dir"] == f"/runs/t{j['seed']}" and j["lr"] == 0.01 for j in distilled)
    assert {(j["width"], j["extra"]["distill.temperature"]) for j in distilled} == {
        (w, t) for w in sweep.WIDTHS for t in sweep.TEMPERATURES}
    assert all(j["extra"]["members.1.model_args.widths"] == [j["width"]] * 2 for j in distilled)
    alone = [j for j in jobs if j["kind"] == "alone"]
    assert all(j["extra"] == {"members.0.model_args.widths": [j["width"]] * 2} and j["lr"] == 0.05 for j in alone)


def test_a_finished_run_is_reused_only_under_the_same_lr():
    jobs = {j["id"]: j for j in bench_kd.jobs(PLAN)}
    assert bench_kd.run_folder(jobs["select-alone-seed100-lr0.02"]) == "select-alone-seed100-lr0.02"
    assert bench_kd.run_folder({**jobs["alone-seed0"], "lr": 0.05}) == "alone-seed0-lr0.05"
    assert bench_kd.run_folder({**jobs["alone-seed0"], "lr": 0.1}) != bench_kd.run_folder({**jobs["alone-seed0"],
                                                                                           "lr": 0.05})
