"""What a training run costs beyond its own work (benchmarks/bench_whole_run.py measures the whole of it).

* ``peerlearn train`` loads no library that only some commands or options need;
* deterministic mode does not fill every new tensor with NaN, and a run repeats exactly without that fill;
* ``load_data`` resizes only the items it keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import peerlearn
from peerlearn.api import set_determinism
from peerlearn.config import load_config
from peerlearn.data import prepare
from conftest import REPO

OPTIONAL = ["sklearn", "scipy", "matplotlib", "tensorboardX", "mlflow", "pandas", "onnx", "onnxruntime", "PIL",
            "sqlalchemy", "timm"]

TRAIN_AND_LIST_MODULES = """
import json, sys
import peerlearn
peerlearn.train({config!r}, out={out!r})
print(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}})))
"""


def test_train_loads_no_optional_library(tmp_path, data_root):
    config = {"name": "lean", "data": {"source": "fashion_mnist", "train_subset": 200, "image_size": 8},
              "members": [{"name": "a", "model": "small_cnn", "model_args": {"width": 4}},
                          {"name": "b", "model": "small_cnn", "model_args": {"width": 4}}],
              "recipe": "mutual", "train": {"epochs": 1, "progress": "off", "threads": 1},
              "tracking": {"tensorboard": False}}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PEERLEARN_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", TRAIN_AND_LIST_MODULES.format(config=config, out=str(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "torch" in loaded and "pydantic" in loaded  # the check sees the run's modules
    assert not loaded & set(OPTIONAL), f"a plain training run imported {sorted(loaded & set(OPTIONAL))}"


def test_deterministic_mode_without_the_nan_fill(tiny, tmp_path, monkeypatch):
    """The fill is off, and a run with it on ends with exactly the same weights and scores."""
    import peerlearn.api as api

    config = load_config(tiny(seed=3))
    original = api.set_determinism

    def with_the_fill(run_config):
        original(run_config)
        torch.utils.deterministic.fill_uninitialized_memory = True

    try:
        set_determinism(config)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        lean = peerlearn.train(config, out=tmp_path / "lean")
        monkeypatch.setattr(api, "set_determinism", with_the_fill)
        filled = peerlearn.train(config, out=tmp_path / "filled")
        assert torch.utils.deterministic.fill_uninitialized_memory is True  # the second run really had the fill
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True
    for name in ("a", "b"):
        for p, q in zip(lean.cohort[name].model.parameters(), filled.cohort[name].model.parameters()):
            assert torch.equal(p, q)
    assert lean.summary["members"] == filled.summary["members"]


def test_only_the_kept_items_are_resized(monkeypatch, data_root):
    sizes = []
    original = prepare.resize_images

    def counted(images, size):
        sizes.append(len(images))
        return original(images, size)

    monkeypatch.setattr(prepare, "resize_images", counted)
    monkeypatch.setenv("PEERLEARN_DATA", str(data_root))
    config = load_config({"data": {"source": "fashion_mnist", "train_subset": 500, "val_size": 100, "image_size": 14}})
    bundle = prepare.load_data(config.data, seed=0)
    assert sorted(sizes) == [100, 500, 10_000]  # validation, training subset, test; not the 60,000
    assert bundle.train.x.shape[1:] == (1, 14, 14) and bundle.val.x.shape == (100, 1, 14, 14)
