"""Sweeps: `peerlearn train CONFIG --seeds ... key=v1,v2 --jobs N` and `peerlearn.sweep`: one run per seed and
grid point in one sweep folder that records its runs."""

from __future__ import annotations

import json

import pytest
import yaml

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.errors import ConfigError
from peerlearn.sweeps import grid_override, parse_seeds, plan_runs, split_values, sweep_run_dirs


def small(**sections):
    members = [{"name": n, "model": "mlp", "model_args": {"widths": [16]}} for n in "ab"]
    return tiny_config(recipe="mutual", members=members, **sections,
                       data={"source": "digits", "batch_size": 64, "val_fraction": 0.2, "train_subset": 300},
                       train={"epochs": 1, "progress": "off", "threads": 1})


def test_grid_values_seeds_and_the_order_of_the_runs():
    assert split_values("0.5,1,2") == ["0.5", "1", "2"]
    assert split_values("[16, 32],[64]") == ["[16, 32]", "[64]"]
    assert split_values("{name: c, model: mlp}") == ["{name: c, model: mlp}"]
    assert grid_override("mutual.weight=0.5,1,2") == ("mutual.weight", ["0.5", "1", "2"])
    assert grid_override("members.0.model_args.widths=[16],[32, 32]") == ("members.0.model_args.widths",
                                                                          ["[16]", "[32, 32]"])
    for plain in ("optim.lr=0.05", "members.+={name: c, model: mlp}", "data.options.query=SELECT a, b FROM t",
                  "name='a,b'"):
        assert grid_override(plain) is None, plain
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    with pytest.raises(ConfigError, match="--seeds takes integers"):
        parse_seeds("a,b")
    assert plan_runs({"x": [1, 2], "y": ["p"]}, [0, 1]) == [["x=1", "y=p", "seed=0"], ["x=1", "y=p", "seed=1"],
                                                          ["x=2", "y=p", "seed=0"], ["x=2", "y=p", "seed=1"]]
    with pytest.raises(ConfigError, match="--seeds"):
        plan_runs({"seed": [0, 1]}, None)


def test_a_python_sweep_equals_the_runs_trained_one_by_one(tmp_path):
    events = []
    result = peerlearn.sweep(small(), seeds=[0, 1], grid={"mutual.weight": [0.5, 2]}, out=tmp_path / "runs",
                             report=lambda event, run, plan: events.append((event, run.index)))
    assert [run.overrides for run in result.runs] == [["mutual.weight=0.5", "seed=0"], ["mutual.weight=0.5", "seed=1"],
                                                      ["mutual.weight=2", "seed=0"], ["mutual.weight=2", "seed=1"]]
    assert events == [(e, i) for i in range(4) for e in ("start", "end")]
    assert not result.failed and len(result.run_dirs) == 4
    record = json.loads((result.sweep_dir / "sweep.json").read_text())
    assert record["seeds"] == [0, 1] and record["grid"] == {"mutual.weight": ["0.5", "2"]}
    assert [r["status"] for r in record["runs"]] == ["done"] * 4
    assert sweep_run_dirs(result.sweep_dir) == result.run_dirs
    for run, run_dir in zip(result.runs, result.run_dirs):
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert f"seed={saved['seed']}" in run.overrides and f"mutual.weight={saved['mutual']['weight']:g}" in run.overrides
    alone = peerlearn.train(small(), out=tmp_path / "alone", seed=1, **{"mutual.weight": 2})
    assert result.runs[3].summary["members"] == alone.summary["members"]  # the sweep's run is that very run


def test_the_cli_sweep_runs_jobs_at_once_and_refuses_a_bad_grid_before_training(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small()))
    done = run_cli("train", str(config), "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    folder = next((tmp_path / "runs").iterdir())
    assert folder.name.startswith("tiny-sweep-")
    assert "sweep run 2/2 (seed=1) done" in done.stdout and f"peerlearn report {folder}" in done.stdout
    record = json.loads((folder / "sweep.json").read_text())
    assert record["jobs"] == 2 and [r["status"] for r in record["runs"]] == ["done", "done"]
    seeds = [yaml.safe_load((folder / r["run_dir"] / "config.yaml").read_text())["seed"] for r in record["runs"]]
    assert seeds == [0, 1] and sorted(p.name for p in (folder / "logs").iterdir()) == ["run-000.log", "run-001.log"]
    # a grid value that the schema refuses: exit 2 before any run (and before a sweep folder is made)
    bad = run_cli("train", str(config), "--seeds", "0,1", "mutual.weight=1,-5", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "mutual.weight" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    refused = run_cli("train", str(config), "--jobs", "2", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--jobs runs the runs of a sweep" in refused.stderr


def test_a_failed_run_is_recorded_and_the_others_go_on_but_a_stop_signal_ends_the_sweep(tmp_path, monkeypatch):
    import peerlearn.api
    from peerlearn.errors import Preempted, TrainingError

    calls = []

    def fake_train(config, out, overrides, **kwargs):
        calls.append(overrides)
        if "seed=1" in overrides:
            raise TrainingError("The loss of member 'a' is not finite")
        if "seed=3" in overrides:
            raise Preempted("Stopped by SIGTERM", 15)
        return peerlearn.api.RunResult(out / f"run-{len(calls)}", {"members": {}}, None, None, None)

    monkeypatch.setattr(peerlearn.api, "train", fake_train)
    with pytest.raises(Preempted):
        peerlearn.sweep(small(), seeds=[0, 1, 2, 3, 4], out=tmp_path)
    assert len(calls) == 4  # seed 4 never started
    record = json.loads(next(tmp_path.glob("tiny-sweep-*/sweep.json")).read_text())
    assert [r["status"] for r in record["runs"]] == ["done", "failed", "done", "failed", "pending"]
    assert record["runs"][1]["exit_code"] == 3 and "not finite" in record["runs"][1]["error"]
    assert record["runs"][3]["exit_code"] == 143
