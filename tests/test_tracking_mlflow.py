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


# --------------------------------------------------------------------------- a tracking URI shared by runs
def _finished_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id])
    return client, sorted(runs, key=lambda run: int(run.data.params["seed"]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_seeds_of_a_sweep_share_one_mlflow_database(tmp_path):
    """tracking.mlflow = a SQLite URI outside the runs: every seed is one MLflow run of one experiment there."""
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()
    config = tiny_config(train={"epochs": 1, "progress": "off", "threads": 1},
                         tracking={"tensorboard": False, "mlflow": uri, "mlflow_experiment": "dml-seeds"})
    result = peerlearn.sweep(config, seeds=[0, 1], out=tmp_path / "runs")
    assert not result.failed
    client, runs = _finished_runs(uri, "dml-seeds")
    assert [run.data.params["seed"] for run in runs] == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in runs)
    for run, sweep_run in zip(runs, result.runs):
        assert run.data.tags["peerlearn.run_dir"] == str((result.sweep_dir / sweep_run.run_dir).resolve())
        assert run.data.metrics["final/test/ensemble/top1"] == pytest.approx(
            sweep_run.summary["ensemble"]["test"]["top1"])
        assert not (result.sweep_dir / sweep_run.run_dir / MLFLOW_DB).exists()  # nothing in the run directory


def test_a_tracking_uri_is_checked_and_an_unreachable_server_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from peerlearn.cli import main
    from peerlearn.config import load_config
    from peerlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="tracking URI"):
        load_config(tiny_config(tracking={"mlflow": "mlflow.db"}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tracking={"tensorboard": False, "mlflow": "http://127.0.0.1:9"})))
    assert main(["train", str(config), "--out", str(tmp_path / "runs")]) == 4
    err = capsys.readouterr().err
    assert "MLflow tracking at 'http://127.0.0.1:9' failed" in err and "Traceback" not in err


def mlflow_server_program():
    """An `mlflow` executable that can serve (the full mlflow package; mlflow-skinny has no server):
    $PEERLEARN_MLFLOW_SERVER, the `make mlflow-server` environment, or this environment's own."""
    import importlib.util
    import os
    from pathlib import Path

    from conftest import REPO

    for candidate in (os.environ.get("PEERLEARN_MLFLOW_SERVER"), REPO / ".venv-mlflow" / "bin" / "mlflow"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    own = shutil.which("mlflow")
    if own and importlib.util.find_spec("flask") is not None:
        return own
    return None


def install_mlflow_server() -> str:
    """No server program yet: install the pinned full mlflow into .venv-mlflow as `make mlflow-server` does
    (tools/mlflow-server.sh; minutes, once). Skips, with the reason, only when the package registry cannot be
    reached; any other failure to install fails the test."""
    import subprocess
    from pathlib import Path

    from conftest import REPO

    done = subprocess.run(["bash", str(REPO / "tools" / "mlflow-server.sh"), sys.executable], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"installing the MLflow server failed:\n{done.stdout}\n{done.stderr}"[-4000:]
    unavailable = Path(REPO / ".venv-mlflow.unavailable")
    if unavailable.is_file():
        pytest.skip(f"no MLflow server program: {unavailable.read_text().strip()}")
    program = mlflow_server_program()
    assert program is not None, f"tools/mlflow-server.sh succeeded but left no mlflow program:\n{done.stdout}"
    return program


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on the loopback (its own SQLite store), stopped after the test."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    program = mlflow_server_program() or install_mlflow_server()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "w")
    process = subprocess.Popen([program, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                                "--default-artifact-root", (store / "artifacts").as_uri()],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # its first start migrates the database: slow on a busy machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (store / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not start in 300 s"
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_runs_are_tracked_on_a_real_mlflow_server(mlflow_server, tmp_path):
    config = tiny_config(train={"epochs": 1, "progress": "off", "threads": 1},
                         tracking={"tensorboard": False, "mlflow": mlflow_server, "mlflow_experiment": "server"})
    results = [peerlearn.train(config, out=tmp_path / "runs", seed=seed) for seed in (0, 1)]
    client, runs = _finished_runs(mlflow_server, "server")
    assert [run.data.params["seed"] for run in runs] == ["0", "1"]
    for run, result in zip(runs, results):
        assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
        history = client.get_metric_history(run.info.run_id, "eval/val/a/top1")
        assert [m.value for m in history] == [pytest.approx(result.summary["members"]["a"]["val"]["top1"])]
        assert run.data.metrics["final/test/ensemble/top1"] == pytest.approx(result.summary["ensemble"]["test"]["top1"])
