"""A streamed run killed with SIGKILL leaves no DataLoader worker behind holding the run's lock: the workers
die with their parent and never held the lock anyway, so `--resume` works at once (it used to be refused
for as long as the orphaned workers lived)."""

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
from peerlearn.cli import main
from peerlearn.data.workers import TiedToParent
from peerlearn.engine.run_dir import RunLock
from test_streaming import write_folder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_streamed_run_can_be_resumed_at_once(tmp_path, capsys):
    root = write_folder(tmp_path / "images", classes=3, per_class=60, size=12)
    config = tiny_config(data={"source": "image_folder", "path": str(root), "batch_size": 4, "val_fraction": 0.2,
                               "stream": True, "stream_workers": 2,
                               "options": {"cache_dir": str(tmp_path / "cache")}},
                         train={"epochs": 40, "eval_test": False})
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "peerlearn", "train", str(path), "--out", str(out)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        workers: list[int] = []
        while not (list(out.glob("*/checkpoint.safetensors")) and workers):  # inside epoch 2, workers reading
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
            workers = children(process.pid)
            time.sleep(0.01)
        process.kill()  # SIGKILL: no handler, no cleanup in the parent
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = next(out.iterdir())
    killed_at = time.monotonic()
    RunLock(run_dir).acquire().release()  # at once: no worker ever held it
    while any(alive(pid) for pid in workers):  # and the workers are gone with their parent
        assert time.monotonic() - killed_at < 3, [pid for pid in workers if alive(pid)]
        time.sleep(0.01)
    code = main(["train", "--resume", str(run_dir), "--change", "train.epochs=2"])
    err = capsys.readouterr().err
    assert code == 0 and "in use by another" not in err, err


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """The lock's descriptor is closed in a forked child: the lock ends with its holder, whatever the child does."""
    lock = RunLock(tmp_path).acquire()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report whether it still has the lock's descriptor, then wait to be killed
        try:
            os.fstat(lock.handle)
            os.write(write, b"open")
        except OSError:
            os.write(write, b"closed")
        time.sleep(60)
        os._exit(0)
    try:
        assert os.read(read, 16) == b"closed"
        lock.release()
        RunLock(tmp_path).acquire().release()  # the living child does not keep it locked
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_worker_whose_parent_is_already_gone_exits():
    """The init function exits a worker at once when its parent died before it could ask to die with it."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "parent" of the worker: builds the init function, forks the worker, then dies
        tie = TiedToParent()
        worker = os.fork()
        if worker == 0:
            time.sleep(0.3)  # the parent dies meanwhile
            os.write(write, f"{os.getpid()}".encode())
            tie(0)  # must not come back
            os.write(write, b" survived")
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(write)
    deadline = time.monotonic() + 10
    message = b""
    while time.monotonic() < deadline:
        piece = os.read(read, 64)
        if not piece:
            break
        message += piece
    assert message and b"survived" not in message, message
