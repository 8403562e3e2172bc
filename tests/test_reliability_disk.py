"""Full disks and planted links. A real, small tmpfs fills up during a checkpoint write (safetensors
raises its own SafetensorError), a metrics append, a TensorBoard flush and the final model write: each
ends with exit code 4 naming the intact checkpoint, from which the run resumes. Symbolic links planted
in a run directory are never written through."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

import peerlearn
from conftest import tiny_config
from peerlearn.cli import main
from peerlearn.engine import trainer as trainer_module
from peerlearn.engine.checkpoint import load_state
from peerlearn.engine.tracking import MetricsLog
from peerlearn.errors import PeerlearnError


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MiB tmpfs mounted for this test (needs root, as in the project's CI container)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until the file system is full (ENOSPC); return it."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return filler


def _train(tmpfs: Path, config: dict, capsys) -> tuple[int, str, Path]:
    path = tmpfs.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["train", str(path), "--out", str(tmpfs / "runs")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err, next((tmpfs / "runs").iterdir())


def _fill_before(monkeypatch, owner, name: str, tmpfs: Path, call: int = 1) -> list:
    """Make the ``call``-th call of ``owner.name`` find the disk full."""
    original, calls, fillers = getattr(owner, name), {"n": 0}, []

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            fillers.append(fill(tmpfs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return fillers


def _check_exit_4_and_resume(code: int, err: str, run_dir: Path, fillers: list, monkeypatch, what: str) -> None:
    saved = load_state(run_dir / "checkpoint.safetensors")["position"]["global_step"]
    assert code == 4, err
    assert "No space left on device" in err and what in err, err
    assert f"{run_dir / 'checkpoint.safetensors'}' (global step {saved}; resume with --resume {run_dir})" in err, err
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob(".tmp*"))
    monkeypatch.undo()
    for filler in fillers:
        filler.unlink()
    assert main(["train", "--resume", str(run_dir)]) == 0  # space freed: the run goes on from there


CONFIG = tiny_config(train={"epochs": 2, "checkpoint_every_steps": 4})


def test_disk_full_during_a_checkpoint_write(tmpfs, monkeypatch, capsys):
    fillers = _fill_before(monkeypatch, trainer_module.Trainer, "save_checkpoint", tmpfs, call=2)
    code, err, run_dir = _train(tmpfs, CONFIG, capsys)
    _check_exit_4_and_resume(code, err, run_dir, fillers, monkeypatch, "Cannot write the checkpoint")


def test_disk_full_during_a_metrics_append(tmpfs, monkeypatch, capsys):
    fillers = _fill_before(monkeypatch, MetricsLog, "log", tmpfs)  # metrics.jsonl is still empty: no page yet
    code, err, run_dir = _train(tmpfs, CONFIG, capsys)
    _check_exit_4_and_resume(code, err, run_dir, fillers, monkeypatch, "A write failed")


def test_disk_full_during_a_tensorboard_flush(tmpfs, monkeypatch, capsys):
    original, fillers = MetricsLog.log, []

    def log_then_flush(self, *args, **kwargs):  # the periodic flush, made to happen at each log
        if not fillers:
            fillers.append(fill(tmpfs))
        original(self, *args, **kwargs)
        self.writer.flush()

    monkeypatch.setattr(MetricsLog, "log", log_then_flush)
    config = tiny_config(train={"epochs": 6, "checkpoint_every_steps": 4}, tracking={"tensorboard": True})
    code, err, run_dir = _train(tmpfs, config, capsys)
    _check_exit_4_and_resume(code, err, run_dir, fillers, monkeypatch, "A write failed")


def test_disk_full_during_the_final_model_write(tmpfs, monkeypatch, capsys):
    fillers = _fill_before(monkeypatch, trainer_module, "save_weights", tmpfs)
    code, err, run_dir = _train(tmpfs, CONFIG, capsys)
    _check_exit_4_and_resume(code, err, run_dir, fillers, monkeypatch, "Cannot write the final weights")


# --------------------------------------------------------------------------- planted links
def test_links_planted_in_a_run_directory_are_never_written_through(tmp_path, capsys):
    run_dir = peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path / "runs").run_dir
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    victims = {}
    for name in ("summary.json", "model.safetensors", "checkpoint.safetensors"):
        victim = tmp_path / f"victim-{name}"
        victim.write_bytes((run_dir / name).read_bytes())  # same content: resume reads it, must not write it
        (run_dir / name).unlink()
        (run_dir / name).symlink_to(victim)
        victims[victim] = victim.read_bytes()
    config_victim = tmp_path / "victim-config.yaml"
    config_victim.write_text(yaml.safe_dump(config))
    (run_dir / "config.yaml").unlink()
    (run_dir / "config.yaml").symlink_to(config_victim)
    victims[config_victim] = config_victim.read_bytes()

    # --change rewrites config.yaml and the checkpoint, then trains on and writes summary and weights
    assert main(["train", "--resume", str(run_dir), "--change", "train.epochs=2"]) == 0, capsys.readouterr().err
    for victim, content in victims.items():
        assert victim.read_bytes() == content, f"{victim.name} was written through a link"
    for name in ("summary.json", "model.safetensors", "checkpoint.safetensors", "config.yaml"):
        assert not (run_dir / name).is_symlink()

    # metrics.jsonl is cut back to the checkpoint on resume by a rename, which replaces a planted link
    victim = tmp_path / "victim-metrics.jsonl"
    victim.write_text("precious\n")
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to(victim)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert victim.read_text() == "precious\n" and not (run_dir / "metrics.jsonl").is_symlink()

    # the lock file is opened in place (O_NOFOLLOW): a link there is refused
    victim = tmp_path / "victim-lock"
    victim.write_text("precious\n")
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").symlink_to(victim)
    code = main(["train", "--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "symbolic link" in err and ".lock" in err, err
    assert victim.read_text() == "precious\n"


def test_the_metrics_append_never_follows_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(PeerlearnError, match="symbolic link"):
        MetricsLog(tmp_path, tensorboard=False)
    assert victim.read_text() == "precious\n"
