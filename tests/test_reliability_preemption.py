"""Preemption: a real `peerlearn train` process sent SIGTERM (what schedulers send) or SIGINT (Ctrl-C)
saves a checkpoint at the next step boundary, prints the run directory and the resume command, exits
with 128 + the signal number, and resuming from that mid-epoch checkpoint ends bit for bit where an
uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import peerlearn
from conftest import REPO, tiny_config
from peerlearn.engine.checkpoint import load_state
from peerlearn.engine.tracking import read_metrics

EPOCHS = 2


def preempt_config() -> dict:
    """Dropout (torch RNG), augmentation, a per-step one-cycle schedule, SGD momentum and Adam moments;
    no mid-epoch checkpoints of its own: the only one mid-epoch is the one the signal asks for."""
    return tiny_config(
        name="preempt", recipe="mutual",
        members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8, "dropout": 0.3}},
                 {"name": "b", "model": "mlp", "model_args": {"widths": [32], "dropout": 0.2},
                  "optim": {"name": "adam", "lr": 0.003}}],
        data={"batch_size": 32, "augment": {"crop_padding": 1, "flip": True}}, schedule={"name": "onecycle"},
        train={"epochs": EPOCHS},
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return peerlearn.train(preempt_config(), out=tmp_path_factory.mktemp("full")).run_dir


def _same_tensors(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.mark.parametrize("sent, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_mid_epoch_prints_the_resume_command_and_resumes_exactly(
        tmp_path, uninterrupted, sent, code):
    config = tmp_path / "preempt.yaml"
    config.write_text(yaml.safe_dump(preempt_config()))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "peerlearn", "train", str(config), "--out", str(out)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/checkpoint.safetensors")):  # epoch 1 is done: now inside epoch 2
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.005)
        time.sleep(0.05)  # past the end of epoch 1 (its checkpoint just appeared), into epoch 2's 36 steps
        process.send_signal(sent)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = next(out.iterdir())
    assert process.returncode == code, err
    assert f"resume with: peerlearn train --resume {run_dir}" in err and f"run directory: {run_dir}" in err, err
    assert signal.Signals(sent).name in err and "Traceback" not in err
    position = load_state(run_dir / "checkpoint.safetensors")["position"]
    assert position["global_epoch"] == 1 and 0 < position["step_in_epoch"], position  # a mid-epoch checkpoint
    assert f"global step {position['global_step']};" in err

    peerlearn.train(resume=run_dir)  # the resume command, in this process
    _same_tensors(uninterrupted / "model.safetensors", run_dir / "model.safetensors")
    _same_tensors(uninterrupted / "checkpoint.safetensors", run_dir / "checkpoint.safetensors")
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert [r["epoch"] for r in train] == list(range(1, EPOCHS + 1))
    assert [r["loss"] for r in train] == [r["loss"] for r in read_metrics(uninterrupted) if r["kind"] == "train"]
