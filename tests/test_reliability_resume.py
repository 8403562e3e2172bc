"""Kill anywhere, resume exactly: SIGKILL a real `peerlearn train` process at random steps, resume it with
--resume until it finishes, and compare every tensor with an uninterrupted run. Also: a checkpoint write
that dies half-way (crash or full disk) never replaces the last good checkpoint."""

from __future__ import annotations

import errno
import os
import random
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
from conftest import REPO, run_cli, tiny_config
from peerlearn.engine import checkpoint as checkpoint_module
from peerlearn.engine.checkpoint import load_state, save_state
from peerlearn.engine.tracking import read_metrics
from peerlearn.errors import ResourceError


def kill_config(epochs: int) -> dict:
    """Everything a resume must restore: dropout (torch RNG), augmentation, a per-step one-cycle
    schedule, SGD momentum and Adam moments, mid-epoch checkpoints every 2 steps."""
    return tiny_config(
        name="kill", recipe="mutual",
        members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8, "dropout": 0.3}},
                 {"name": "b", "model": "mlp", "model_args": {"widths": [32], "dropout": 0.2},
                  "optim": {"name": "adam", "lr": 0.003}}],
        data={"augment": {"crop_padding": 1, "flip": True}}, schedule={"name": "onecycle"},
        train={"epochs": epochs, "checkpoint_every_steps": 2},
    )


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "peerlearn", "train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _saved_step(path: Path) -> int | None:
    """The global step of the checkpoint on disk (None before the first one)."""
    if not path.is_file():
        return None
    return load_state(path)["position"]["global_step"]


def _run_dir(out: Path) -> Path | None:
    found = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    return found[0] if found else None


def kill_and_resume(config_path: Path, out: Path, kills: int, total_steps: int, seed: int) -> list[int]:
    """Train, SIGKILL-ing the process ``kills`` times at random steps (resuming after each); return the
    checkpoint steps seen at each kill. The kill lands a random few milliseconds after a checkpoint
    appears, so it hits anywhere: inside a step, in evaluation, or half-way through a checkpoint write."""
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(2, int(total_steps * 0.7)), kills))
    killed_at = []
    run_dir = None
    for target in targets:
        process = _start([str(config_path), "--out", str(out)] if run_dir is None else ["--resume", str(run_dir)])
        try:
            base = _saved_step(run_dir / "checkpoint.safetensors") if run_dir else None
            goal = max(target, (base or 0) + 1)  # each life must get past its checkpoint
            while process.poll() is None:
                run_dir = run_dir or _run_dir(out)
                step = _saved_step(run_dir / "checkpoint.safetensors") if run_dir else None
                if step is not None and step >= goal:
                    time.sleep(rng.uniform(0.0, 0.03))
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        assert code == -signal.SIGKILL, f"the run ended (exit {code}) before the kill at step {goal}: " \
                                        f"{process.stderr.read().decode()[-2000:]}"
        process.stderr.close()
        killed_at.append(_saved_step(run_dir / "checkpoint.safetensors"))
    done = run_cli("train", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    return killed_at


def _assert_same_tensors(a: Path, b: Path, context: str = "") -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{key} differs {context}"


def _check_kill_run(tmp_path: Path, epochs: int, kills: int, seed: int) -> None:
    config = kill_config(epochs)
    config_path = tmp_path / "kill.yaml"
    config_path.write_text(yaml.safe_dump(config))
    full = peerlearn.train(config, out=tmp_path / "full")
    killed_at = kill_and_resume(config_path, tmp_path / "cut", kills, full.summary["steps"], seed)
    assert len(killed_at) == kills and killed_at == sorted(killed_at)
    cut = _run_dir(tmp_path / "cut")
    context = f"(killed after the checkpoints of steps {killed_at})"
    _assert_same_tensors(full.run_dir / "model.safetensors", cut / "model.safetensors", context)
    # optimizer moments, schedule and RNG states too: the final checkpoints agree tensor for tensor
    _assert_same_tensors(full.run_dir / "checkpoint.safetensors", cut / "checkpoint.safetensors", context)
    # the metrics read as one uninterrupted run: the same epochs, each logged once, same training means
    def records(run):
        return [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["epoch"] for r in records(cut)] == list(range(1, epochs + 1))
    assert [r["loss"] for r in records(cut)] == [r["loss"] for r in records(full.run_dir)]
    assert not list(cut.glob(".*.tmp")), "stale temporary checkpoint files were left behind"


def test_sigkill_at_five_random_steps_then_resume_is_bit_exact(tmp_path):
    _check_kill_run(tmp_path, epochs=6, kills=5, seed=1)


@pytest.mark.slow
def test_sigkill_at_many_random_steps_then_resume_is_bit_exact(tmp_path):
    _check_kill_run(tmp_path, epochs=12, kills=20, seed=2)


# --------------------------------------------------------------------------- interrupted writes
def _partial_writer(original):
    """A stand-in for safetensors' save_file that writes half of the real bytes, then dies."""
    def write(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed during the write")
    return write


def test_a_crash_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    save_state(path, {"step": 1, "w": torch.arange(1000.0)})
    monkeypatch.setattr(checkpoint_module, "save_file", _partial_writer(checkpoint_module.save_file))
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"step": 2, "w": torch.zeros(1000)})
    back = load_state(path)
    assert back["step"] == 1 and torch.equal(back["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no half-written leftovers


def test_atomic_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(checkpoint_module.os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_state(tmp_path / "c.safetensors", {"x": torch.ones(3)})
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == 2  # the file, then the folder


def test_full_disk_during_training_fails_with_the_last_checkpoint_intact(tiny, tmp_path, monkeypatch):
    config = tiny(train={"epochs": 3, "checkpoint_every_steps": 5})
    full = peerlearn.train(config, out=tmp_path / "full")
    original, calls = checkpoint_module.save_file, {"n": 0}

    def disk_fills_up(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th checkpoint write: steps 5, 10, 15, [16 = epoch end] ...
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_fills_up)
    with pytest.raises(ResourceError) as caught:
        peerlearn.train(config, out=tmp_path / "cut")
    message = str(caught.value)
    run_dir = _run_dir(tmp_path / "cut")
    saved = load_state(run_dir / "checkpoint.safetensors")["position"]["global_step"]
    assert "No space left on device" in message and "checkpoint.safetensors" in message
    assert f"global step {saved};" in message and "--resume" in message
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint_module, "save_file", original)
    resumed = peerlearn.train(resume=run_dir)  # space freed: the run goes on, to the same weights
    _assert_same_tensors(full.run_dir / "model.safetensors", resumed.run_dir / "model.safetensors")


def test_full_disk_exits_with_code_4_naming_the_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    from peerlearn.cli import main

    def no_space(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"epochs": 1})))
    monkeypatch.setattr(checkpoint_module, "save_file", no_space)
    assert main(["train", str(config), "--out", str(tmp_path / "runs")]) == 4
    err = capsys.readouterr().err
    assert "No space left on device" in err and "none (nothing was saved yet)" in err and "Traceback" not in err


def test_resume_drops_a_metrics_line_torn_by_a_kill(tmp_path):
    from peerlearn.engine.tracking import MetricsLog

    good = ['{"kind": "train", "step": 16, "epoch": 1, "loss": 1.5}', '{"kind": "eval", "step": 16, "epoch": 1}',
            '{"kind": "train", "step": 32, "epoch": 2, "loss": 1.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(good) + "\n" + '{"kind": "eval", "st')  # killed mid-line
    log = MetricsLog(tmp_path, tensorboard=False, resume_step=20)
    log.log("train", 32, 2, {"loss": 0.9})
    log.close()
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("train", 16), ("eval", 16), ("train", 32)]


def _write_checkpoints(path: str, count: int) -> None:
    for step in range(1, count):  # sizes change with the step, as real checkpoints' headers do
        save_state(Path(path), {"step": step, "w": torch.full((1000 + 37 * (step % 7),), float(step))})


def test_a_reader_racing_the_writer_sees_a_whole_checkpoint(tmp_path):
    """Readers (a poller, an analysis) get the old or the new checkpoint while another process replaces
    it, never a mix of the two."""
    import multiprocessing

    path = tmp_path / "checkpoint.safetensors"
    save_state(path, {"step": 0, "w": torch.zeros(1000)})
    writer = multiprocessing.get_context("fork").Process(target=_write_checkpoints, args=(str(path), 300))
    writer.start()
    seen = []
    try:
        while writer.is_alive():
            state = load_state(path)
            assert torch.equal(state["w"], torch.full((1000 + 37 * (state["step"] % 7),), float(state["step"])))
            seen.append(state["step"])
    finally:
        writer.join()
    assert writer.exitcode == 0 and len(seen) > 10 and seen == sorted(seen)
