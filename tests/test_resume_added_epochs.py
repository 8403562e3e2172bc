"""Epochs added to a finished run (`--resume --change train.epochs=N`) train with the schedule restarted over
them from the base lr; a finished run resumed without changes says that nothing is left to train."""

import json
import logging
import math

import pytest

import peerlearn
from conftest import Interrupt, tiny_config
from peerlearn.engine.trainer import Trainer


def epoch_lrs(run_dir) -> dict[int, float]:
    """Member a's lr after each epoch's schedule step, from metrics.jsonl (the last record of each epoch)."""
    lrs = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if isinstance(entry.get("lr"), dict) and float(entry["epoch"]).is_integer():
            lrs[int(entry["epoch"])] = entry["lr"]["a"]
    return lrs


def cosine(base: float, epoch: int, epochs: int, low: float = 0.0) -> float:
    return low + (base - low) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.fixture
def finished_cosine(tmp_path):
    config = tiny_config(train={"epochs": 2}, schedule={"name": "cosine"})
    return config, peerlearn.train(config, out=tmp_path / "runs")


def test_added_epochs_restart_the_cosine_schedule_from_the_base_lr(finished_cosine):
    _, result = finished_cosine
    assert epoch_lrs(result.run_dir)[2] == pytest.approx(0.0, abs=1e-12)  # the schedule had ended
    extended = peerlearn.train(resume=result.run_dir, changes=["train.epochs=5"])
    lrs = epoch_lrs(result.run_dir)
    # epochs 3..5 are a cosine over 3 epochs from 0.05: after epoch 3 (one step) 0.05·(1+cos(π/3))/2, ...
    for done in (1, 2, 3):
        assert lrs[2 + done] == pytest.approx(cosine(0.05, done, 3), abs=1e-9), lrs
    assert extended.summary["epochs"] == 5
    from peerlearn.engine.checkpoint import load_state

    assert load_state(result.run_dir / "checkpoint.safetensors")["restarts"] == [
        {"stage": 0, "epoch": 2, "epochs": 3, "step": result.summary["steps"]}]


def test_added_epochs_start_from_a_changed_base_lr(finished_cosine):
    _, result = finished_cosine
    peerlearn.train(resume=result.run_dir, changes=["train.epochs=4", "optim.lr=0.02"])
    lrs = epoch_lrs(result.run_dir)
    assert lrs[3] == pytest.approx(cosine(0.02, 1, 2), abs=1e-9) and lrs[4] == pytest.approx(0.0, abs=1e-9)


def test_an_extension_interrupted_and_resumed_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    config = tiny_config(train={"epochs": 1}, schedule={"name": "cosine"})
    whole = peerlearn.train(config, out=tmp_path / "whole")
    peerlearn.train(resume=whole.run_dir, changes=["train.epochs=3"])
    cut = peerlearn.train(config, out=tmp_path / "cut")
    original, calls = Trainer.evaluate, {"n": 0}

    def evaluate_then_die(self, *args, **kwargs):  # the extension crashes at its second evaluation (epoch 3)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_die)
    with pytest.raises(Interrupt):
        peerlearn.train(resume=cut.run_dir, changes=["train.epochs=3"])
    monkeypatch.setattr(Trainer, "evaluate", original)
    resumed = peerlearn.train(resume=cut.run_dir)  # from epoch 2's checkpoint, inside the restarted schedule
    assert epoch_lrs(cut.run_dir) == pytest.approx(epoch_lrs(whole.run_dir))
    theirs = json.loads((whole.run_dir / "summary.json").read_text())["members"]
    assert resumed.summary["members"] == theirs


def test_a_finished_run_resumed_without_changes_says_it_is_finished(finished_cosine, caplog):
    _, result = finished_cosine
    with caplog.at_level(logging.WARNING, logger="peerlearn"):
        again = peerlearn.train(resume=result.run_dir)
    assert "had already finished" in caplog.text and "--change train.epochs=N" in caplog.text
    assert again.summary["epochs"] == 2 and again.summary["steps"] == result.summary["steps"]


def test_the_cli_says_a_finished_run_is_finished(finished_cosine):
    from conftest import run_cli

    _, result = finished_cosine
    process = run_cli("train", "--resume", str(result.run_dir))
    assert process.returncode == 0, process.stderr
    assert "had already finished" in process.stderr
