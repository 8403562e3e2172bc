"""The optional MLflow logger: params, per-step and per-epoch metrics and the final ones in RUN_DIR/mlflow.db, off by default."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml

import peerlearn
from conftest import tiny_config
from peerlearn.engine.tracking import MLFLOW_DB, MLFLOW_RUN_ID, MlflowLogger, flatten_params, mlflow_key, read_metrics


def test_flatten_params_by_hand():
    tree = {"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "members": [{"model": "mlp", "model_args": {}}],
            "data": {"root": None}, "name": "x"}
    assert flatten_params(tree) == {"optim.lr": "0.1", "optim.betas.0": "0.9", "optim.betas.1": "0.99",
                                    "members.0.model": "mlp", "members.0.model_args": "{}", "data.root": "null",
                                    "name": "x"}
    assert mlflow_key("eval/val/a+b:top1") == "eval/val/a_b_top1"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy deprecations inside MLflow's store
def test_mlflow_store_in_the_run_dir_holds_config_and_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may be written outside the run directory
    result = peerlearn.train(tiny_config(tracking={"tensorboard": False, "mlflow": True, "log_every_steps": 10}),
                             out="runs")
    run_dir = result.run_dir.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / MLFLOW_DB}")
    run_id = (run_dir / MLFLOW_RUN_ID).read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.05" and params["members.1.model"] == "small_cnn"
    assert params["recipe"] == "independent" and params["tracking.mlflow"] == "true"
    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    history = client.get_metric_history(run_id, "eval/val/a/top1")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["val"]["a"]["top1"])) for r in evals]
    assert len(client.get_metric_history(run_id, "train/a/ce")) == 2
    steps = [r for r in read_metrics(run_dir) if r["kind"] == "step"]  # every tracking.log_every_steps
    assert steps and [m.step for m in client.get_metric_history(run_id, "step/loss")] == [r["step"] for r in steps]
    assert all(m.value == 0.05 for m in client.get_metric_history(run_id, "step/lr/a"))
    final = client.get_metric_history(run_id, "final/test/ensemble/top1")
    assert [m.value for m in final] == [pytest.approx(result.summary["ensemble"]["test"]["top1"])]
    # a resumed run continues the same MLflow run
    again = MlflowLogger(run_dir, {}, "resumed", resume=True)
    assert again.run_id == run_id
    again.close()
    # a run that stops with an error is marked FAILED, with what it logged so far
    other = tmp_path / "diverged"
    other.mkdir()
    shutil.copy(run_dir / MLFLOW_DB, other / MLFLOW_DB)  # an existing store: no schema migrations to wait for
    failed = MlflowLogger(other, {"optim.lr": "1e9"}, "diverged")
    failed.log("train", 7, {"a/ce": 2.5})
    failed.close(finished=False)
    other_client = MlflowClient(tracking_uri=failed.uri)
    assert failed.run_id != run_id and other_client.get_run(failed.run_id).info.status == "FAILED"
    assert [(m.step, m.value) for m in other_client.get_metric_history(failed.run_id, "train/a/ce")] == [(7, 2.5)]


def test_mlflow_off_by_default_and_clear_error_when_missing(tmp_path, monkeypatch, capsys):
    from peerlearn.cli import main

    result = peerlearn.train(tiny_config(train={"epochs": 1, "progress": "off", "threads": 1}), out=tmp_path / "a")
    assert not (result.run_dir / MLFLOW_DB).exists()
    for module in ("mlflow", "mlflow.tracking"):  # as if the extra were not installed
        monkeypatch.setitem(sys.modules, module, None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tracking={"tensorboard": False, "mlflow": True})))
    assert main(["train", str(config), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "tracking.mlflow" in err and "peerlearn[mlflow]" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()  # stopped before creating a run directory
