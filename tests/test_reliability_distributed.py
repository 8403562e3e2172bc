"""Distributed faults end cleanly: real gloo processes started by `--launcher local`; one rank is killed
(or stopped) and every other process and the launcher exit within engine.dist_timeout, with one message
naming the failed rank and exit code 5 (DistributedError), never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of the processes that ``pid`` launched (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            rank = next((int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


def _launch(tmp_path: Path, timeout: float) -> tuple[subprocess.Popen, Path]:
    config = tiny_config(recipe="mutual", train={"epochs": 200, "checkpoint_every_steps": 2},
                         engine={"dist_timeout": timeout})
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "runs"
    launcher = subprocess.Popen([sys.executable, "-m", "peerlearn", "train", str(path), "--out", str(out),
                                 "--launcher", "local", "--nproc", "2"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and launcher.poll() is None:
        if list(out.glob("*/checkpoint.safetensors")):
            return launcher, next(out.iterdir())
        time.sleep(0.05)
    launcher.kill()
    raise AssertionError(f"the distributed run never wrote a checkpoint: {launcher.communicate()[1][-2000:]}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_fault(tmp_path: Path, send: signal.Signals, timeout: float, bound: float) -> str:
    launcher, run_dir = _launch(tmp_path, timeout)
    ranks = _children(launcher.pid)
    assert sorted(ranks) == [0, 1], ranks
    started = time.monotonic()
    os.kill(ranks[1], send)
    try:
        _, err = launcher.communicate(timeout=bound + 30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in ranks.values():  # never leave a process behind, whatever happened
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    assert launcher.returncode == 5, err[-3000:]
    assert elapsed < bound, f"the launcher needed {elapsed:.1f} s"
    assert not any(_alive(pid) for pid in ranks.values()), "a rank outlived the launcher"
    assert "Traceback" not in err, err[-3000:]
    assert (run_dir / "checkpoint.safetensors").is_file()
    return err


def test_a_killed_rank_stops_the_others_with_exit_5_naming_it(tmp_path):
    err = _check_fault(tmp_path, signal.SIGKILL, timeout=60, bound=15)
    assert "rank 1" in err and "SIGKILL" in err, err


@pytest.mark.slow
def test_a_stalled_rank_is_given_up_after_dist_timeout(tmp_path):
    err = _check_fault(tmp_path, signal.SIGSTOP, timeout=5, bound=5 + 15)
    assert "rank 0 lost the other processes" in err and "rank 1 stopped answering" in err, err


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_every_process_at_one_step(tmp_path):
    launcher, run_dir = _launch(tmp_path, timeout=60)
    ranks = _children(launcher.pid)
    time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 143, err
    assert f"resume with: peerlearn train --resume {run_dir}" in err and "rank 1 stopped by SIGTERM" in err, err
    assert not any(_alive(pid) for pid in ranks.values())
