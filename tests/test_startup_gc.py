"""The command line pauses Python's cyclic GC while a command starts and resumes it, after gc.freeze(), once the
run is prepared or read back (peerlearn/startup_gc.py); a library user's process is left alone."""

from __future__ import annotations

import gc
import os

import pytest
import yaml

import peerlearn.api
import peerlearn.run_reader
from peerlearn import startup_gc
from peerlearn.cli import main
from peerlearn.data.workers import TiedToParent


@pytest.fixture(autouse=True)
def collector_restored():
    """Every test starts with the collector on and nothing frozen, and leaves it so."""
    gc.enable()
    gc.unfreeze()
    yield
    startup_gc._paused = False
    gc.enable()
    gc.unfreeze()


def test_settle_without_a_pause_changes_nothing():
    startup_gc.settle()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_pause_then_settle_freezes_what_exists_and_collects_again():
    startup_gc.pause()
    assert not gc.isenabled()
    startup_gc.settle()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    startup_gc.settle()  # idempotent
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_a_collector_the_caller_turned_off_stays_off():
    gc.disable()
    startup_gc.pause()
    startup_gc.settle()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def _watch(monkeypatch, module, name, seen, label):
    original = getattr(module, name)

    def watched(*args, **kwargs):
        seen.append((label, gc.isenabled()))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, watched)


def test_train_starts_without_collections_and_trains_with_them(tiny, tmp_path, monkeypatch):
    seen = []
    _watch(monkeypatch, peerlearn.api, "load_data", seen, "start-up")  # inside prepare_run, before it settles
    _watch(monkeypatch, peerlearn.api, "_fit", seen, "training")       # after prepare_run
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"epochs": 1, "progress": "off", "threads": 1})))
    assert main(["train", str(config), "--out", str(tmp_path / "runs")]) == 0
    assert seen == [("start-up", False), ("training", True)]
    assert gc.isenabled() and gc.get_freeze_count() > 0
    run_dir = next((tmp_path / "runs").iterdir())

    gc.unfreeze()
    seen.clear()
    _watch(monkeypatch, peerlearn.run_reader.RunReader, "read", seen, "reading")  # settled once it returns
    assert main(["evaluate", str(run_dir)]) == 0
    assert seen == [("reading", False)]
    assert gc.isenabled() and gc.get_freeze_count() > 0


def test_a_failing_command_resumes_collection(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) != 0
    assert "missing.yaml" in capsys.readouterr().err
    assert gc.isenabled()


def test_library_calls_leave_the_collector_alone(tiny, tmp_path):
    peerlearn.api.train(tiny(train={"epochs": 1, "progress": "off", "threads": 1}), out=tmp_path)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_data_worker_forked_during_start_up_collects():
    """A DataLoader worker forked while the command line holds the collector turns it back on in its init."""
    startup_gc.pause()
    tie = TiedToParent()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker
        before = gc.isenabled()
        tie(0)
        os.write(write, f"{before} {gc.isenabled()}".encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    assert os.read(read, 64) == b"False True"
    os.close(read)
