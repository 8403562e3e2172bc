"""Shared fixtures: a tiny, fast config on the embedded digits, and where real data lives."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """The folder with the official MNIST / Fashion-MNIST files ($PEERLEARN_DATA or ../shared/data)."""
    for candidate in (os.environ.get("PEERLEARN_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "fashion-mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def _garbage_collector_unfrozen():
    """A test that runs the command line in this process lets it freeze the objects alive at start-up
    (peerlearn/startup_gc.py): unfrozen afterwards, so that the suite's long-lived process can still collect
    what earlier tests left in reference cycles."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    gc.enable()


@pytest.fixture(autouse=True, scope="session")
def _caches_in_a_temporary_folder(tmp_path_factory):
    """Feature and decoded-image caches of the tests go to a temporary folder, not the user's ~/.cache; the
    key that signs the tests' runs (peerlearn.trust) to another one, not the user's ~/.config."""
    values = {"PEERLEARN_CACHE": str(tmp_path_factory.mktemp("peerlearn-cache")),
              "PEERLEARN_TRUST_KEY_FILE": str(tmp_path_factory.mktemp("peerlearn-config") / "trust.key")}
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def data_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST/Fashion-MNIST files not found: set PEERLEARN_DATA to the folder holding them")
    return root


def tiny_config(**sections) -> dict:
    """Two small CNNs on digits, 2 epochs: trains in a second or two."""
    config = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "digits", "batch_size": 64, "val_fraction": 0.2},
        "members": [{"name": "a", "model": "small_cnn", "model_args": {"width": 8}},
                    {"name": "b", "model": "small_cnn", "model_args": {"width": 8}}],
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "progress": "off", "threads": 1},
        "tracking": {"tensorboard": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def tiny():
    return tiny_config


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m peerlearn ARGS`` with this checkout's sources first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "peerlearn", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


class Interrupt(Exception):
    """Raised by ``train_interrupted_at_evaluation`` to cut a run short, like a crash would."""


def train_interrupted_at_evaluation(config, out: Path, evaluation: int, monkeypatch) -> Path:
    """Train ``config`` but crash at its ``evaluation``-th evaluation (before that epoch's checkpoint);
    return the interrupted run directory, ready for ``peerlearn.train(resume=...)``."""
    import peerlearn
    from peerlearn.engine.trainer import Trainer

    original, calls = Trainer.evaluate, {"n": 0}

    def evaluate_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == evaluation:
            raise Interrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_die)
    with pytest.raises(Interrupt):
        peerlearn.train(config, out=out)
    monkeypatch.setattr(Trainer, "evaluate", original)
    return next(Path(out).iterdir())
