"""Distributed DML on CPU (gloo, local launcher): same weights as one process; resume; data parallel replicas."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import peerlearn
from conftest import REPO, run_cli
from peerlearn.engine.distributed import check_distributed_config, world_from_env
from peerlearn.config import load_config
from peerlearn.errors import ConfigError
from peerlearn.recipes import get_recipe


def _write(config, path):
    path.write_text(yaml.safe_dump(config))
    return path


def _only_run(parent):
    runs = list(parent.iterdir())
    assert len(runs) == 1, runs  # every process used the one directory rank 0 created
    return runs[0]


def _assert_same_weights(a, b, atol=1e-6):
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key].float(), right[key].float(), rtol=1e-5, atol=atol, msg=key)


def _eval_epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "eval"]


SMALL = {"source": "digits", "batch_size": 64, "val_fraction": 0.2, "train_subset": 384}


def test_two_processes_end_with_the_single_process_weights_and_resume(tiny, tmp_path):
    # a schedule stepped per epoch: each process steps only its own member's (no torch warning about a
    # schedule stepped before its optimizer), the others arrive with the member's state
    config = tiny(recipe="mutual", data=SMALL, schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    single = peerlearn.train(config, out=tmp_path / "single")

    done = run_cli("train", str(_write(config, tmp_path / "c.yaml")), "--out", str(tmp_path / "dist"),
                   "--launcher", "local", "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert "lr_scheduler.step()" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert done.stdout.count("run directory:") == 1  # only rank 0 reports
    run = _only_run(tmp_path / "dist")
    _assert_same_weights(single.run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["members"]["a"]["test"]["top1"] == pytest.approx(single.summary["members"]["a"]["test"]["top1"])
    assert _eval_epochs(run) == [1, 2]  # rank 0 alone writes the log

    # a distributed run stopped after epoch 1 (its checkpoint written by rank 0) resumes in 2 processes; with a
    # constant schedule (epochs added to a finished stage restart its schedule: docs/resume, engine/resume.py)
    constant = tiny(recipe="mutual", data=SMALL)
    single = peerlearn.train(constant, out=tmp_path / "single-constant")
    short = run_cli("train", str(_write(constant, tmp_path / "constant.yaml")), "train.epochs=1",
                    "train.checkpoint_every_steps=2", "--out", str(tmp_path / "cut"), "--launcher", "local",
                    "--nproc", "2")
    assert short.returncode == 0, short.stderr
    cut = _only_run(tmp_path / "cut")
    # resumed under torchrun this time: the processes find their rank in the environment; the run goes on
    # for a second epoch (constant schedule: the first epoch is the same as in the 2-epoch run)
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "peerlearn", "train", "--resume", str(cut), "--change", "train.epochs=2",
                              "--change", "train.checkpoint_every_steps=null"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(single.run_dir, cut)
    assert _eval_epochs(cut) == [1, 2]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_of_torchrun_with_c10d_rendezvous_equal_the_single_process_run(tiny, tmp_path):
    """docs/scale.md's multi-node launch, both "nodes" on this machine: `torchrun --nnodes 2 --nproc-per-node 1
    --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT` started twice; one member per node."""
    members = [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in "ab"]
    config = tiny(recipe="mutual", members=members, data=SMALL, train={"epochs": 1, "progress": "off", "threads": 1},
                  schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    single = peerlearn.train(config, out=tmp_path / "single")
    path = _write(config, tmp_path / "c.yaml")
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
                               "-m", "peerlearn", "train", str(path), "--out", str(tmp_path / "dist")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum(out.count("run directory:") for out in outputs) == 1  # rank 0, on one of the nodes, reports
    assert not any("lr_scheduler.step()" in out for out in outputs), outputs
    run = _only_run(tmp_path / "dist")
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    _assert_same_weights(single.run_dir, run)


@pytest.mark.slow  # four processes: ~25 s of CPU
def test_data_parallel_replicas_equal_the_single_process_run(tiny, tmp_path):
    """4 processes, 2 members: each member trained by 2 replicas on half batches with averaged gradients.
    Without BatchNorm the averaged half-batch gradients are the full-batch gradient."""
    members = [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in "ab"]
    config = tiny(recipe="mutual", members=members, data=SMALL)
    single = peerlearn.train(config, out=tmp_path / "single")
    done = run_cli("train", str(_write(config, tmp_path / "c.yaml")), "--out", str(tmp_path / "dist"),
                   "--launcher", "local", "--nproc", "4")
    assert done.returncode == 0, done.stderr
    _assert_same_weights(single.run_dir, _only_run(tmp_path / "dist"), atol=1e-5)


@pytest.mark.parametrize("change, world, hint", [
    ({}, 3, "multiple of the number of members"),
    ({"data": {"source": "digits", "batch_size": 63}}, 4, "batch_size"),
    ({"engine": {"fused": True}}, 2, "fused"),
])
def test_distributed_config_errors(tiny, change, world, hint):
    config = load_config(tiny(recipe="mutual", **change))
    with pytest.raises(ConfigError, match=hint):
        check_distributed_config(config, world)


def test_the_sequential_update_cannot_run_distributed_by_the_mutual_recipes_rule(tiny, tmp_path):
    config = load_config(tiny(recipe="mutual", mutual={"update": "sequential"}))
    get_recipe("mutual").check_capabilities(config)  # one process: fine
    with pytest.raises(ConfigError, match="'mutual.update' has the value 'sequential'.*simultaneous"):
        get_recipe("mutual").check_capabilities(config, world_size=2)
    done = run_cli("train", str(_write(config.model_dump(mode="json"), tmp_path / "c.yaml")), "--out",
                   str(tmp_path / "runs"), "--launcher", "local", "--nproc", "2")
    assert done.returncode == 2 and "simultaneous" in done.stderr and "Traceback" not in done.stderr


def test_bad_process_count_exits_2_before_starting_processes(tiny, tmp_path):
    done = run_cli("train", str(_write(tiny(recipe="mutual"), tmp_path / "c.yaml")), "--out", str(tmp_path),
                   "--launcher", "local", "--nproc", "3")
    assert done.returncode == 2
    assert "multiple of the number of members" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("tiny-*"))


def test_single_process_environment_is_not_distributed(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert world_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == (3, 4, 1)
