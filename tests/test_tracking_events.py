"""TensorBoard and metrics.jsonl: per-step loss and learning rate, hparams with final metrics, and logs that are
complete up to the last checkpoint after a SIGKILL and hold no duplicate step after --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

import peerlearn
from conftest import REPO, tiny_config
from peerlearn.engine.checkpoint import load_state
from peerlearn.engine.tb_events import read_events, read_scalars
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData


def _config(**train):  # 4 epochs of 18 steps
    return tiny_config(recipe="mutual", train={"epochs": 4, "progress": "off", "threads": 1, **train},
                       tracking={"tensorboard": True, "log_every_steps": 4})


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_step_loss_lr_and_hparams_reach_tensorboard(tmp_path):
    result = peerlearn.train(_config(), out=tmp_path)
    scalars = read_scalars(result.run_dir / "tensorboard")
    steps = [step for step, _ in scalars["step/loss"]]
    assert steps and all(step % 4 == 0 for step in steps)
    assert steps == [s for s in range(4, result.summary["steps"] + 1, 4)]
    assert all(abs(value - 0.05) < 1e-8 for _, value in scalars["step/lr/a"])  # TensorBoard keeps float32
    step_records = [r for r in _records(result.run_dir) if r["kind"] == "step"]
    assert [r["step"] for r in step_records] == steps
    assert all(abs(r["loss"] - v) <= 1e-6 * abs(v) for r, (_, v) in zip(step_records, scalars["step/loss"]))
    # final metrics beside the hyper-parameters
    final = result.summary["ensemble"]["test"]["top1"]
    assert abs(scalars["final/test/ensemble/top1"][0][1] - final) < 1e-6
    starts = [v for e in read_events(result.run_dir / "tensorboard") for v in e.summary.value
              if v.tag == "_hparams_/session_start_info"]
    assert len(starts) == 1
    hparams = HParamsPluginData.FromString(starts[0].metadata.plugin_data.content).session_start_info.hparams
    assert hparams["optim.lr"].number_value == 0.05 and hparams["recipe"].string_value == "mutual"
    assert hparams["members.1.model_args.width"].number_value == 8


KILL_AT_THIRD_EVALUATION = """
import os, signal, sys
import peerlearn
from peerlearn.engine.trainer import Trainer

original, calls = Trainer.evaluate, {"n": 0}

def evaluate_then_die(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 3:  # epoch 3 has been trained and logged, its checkpoint is not written
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)

Trainer.evaluate = evaluate_then_die
peerlearn.train(sys.argv[1], out=sys.argv[2])
"""


def _without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if "seconds" not in k}


def test_sigkill_then_resume_leaves_no_hole_and_no_duplicate(tmp_path):
    config = _config()
    full = peerlearn.train(config, out=tmp_path / "full")

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT_THIRD_EVALUATION)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "cut")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    run_dir = next((tmp_path / "cut").iterdir())
    saved_step = load_state(run_dir / "checkpoint.safetensors")["position"]["global_step"]

    # after the kill: everything up to the checkpoint is on disk, in TensorBoard and in metrics.jsonl
    full_scalars = read_scalars(full.run_dir / "tensorboard")
    killed = read_scalars(run_dir / "tensorboard")
    for tag, points in full_scalars.items():
        if not tag.startswith("final/"):
            assert [p for p in killed.get(tag, []) if p[0] <= saved_step] == [p for p in points if p[0] <= saved_step], tag
    full_records = [_without_time(r) for r in _records(full.run_dir)]
    assert [_without_time(r) for r in _records(run_dir) if r["step"] <= saved_step] == \
        [r for r in full_records if r["step"] <= saved_step]
    assert any(r["kind"] == "eval" and r["epoch"] == 2 for r in _records(run_dir))

    # after --resume: the same curves as the uninterrupted run, each step once
    peerlearn.train(resume=run_dir)
    assert read_scalars(run_dir / "tensorboard") == full_scalars
    assert [_without_time(r) for r in _records(run_dir)] == full_records
