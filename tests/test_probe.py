"""The separability probe: features per depth, the logistic-regression probe, and its effect after greedy training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.evaluate.probe import depth_features, fit_linear_probe, probe_run

from conftest import run_cli

NET = {"name": "net", "model": "layerwise_cnn", "model_args": {"blocks": 3, "width": 16, "k": 1,
                                                               "downsample_at": [1]}}


def test_depth_features_average_each_block_to_pool_by_pool(tiny):
    _, _, recipe = prepare_run(load_config(tiny(recipe="greedy", members=[NET])))
    feats, labels = depth_features(recipe.model, recipe.eval_streams["val"], pool=2)
    n = len(recipe.data.val)
    assert [f.shape for f in feats] == [(n, 1 * 4), (n, 16 * 4), (n, 32 * 4), (n, 32 * 4)]
    x = recipe.eval_streams["val"].normalizer(recipe.data.val.x[:3])
    manual = x[:, :, :4, :4].mean((2, 3))  # top-left 4×4 quarter of an 8×8 digit
    assert np.allclose(feats[0][:3, 0], manual[:, 0].numpy(), atol=1e-6)
    assert np.array_equal(labels, recipe.data.val.y.numpy())


def test_linear_probe_scores_separable_and_random_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    scores = fit_linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert scores["train"] > 0.95 and scores["test"] > 0.9
    noise = fit_linear_probe(x[:300], rng.integers(0, 2, 300), x[300:], rng.integers(0, 2, 100))
    assert noise["test"] < 0.7


def test_separability_rises_with_depth_after_greedy_training(tiny, tmp_path):
    result = peerlearn.train(tiny(recipe="greedy", members=[NET], greedy={"epochs": 3}), out=tmp_path)
    probe = probe_run(result.run_dir)
    test = [row["test"] for row in probe["depths"]]
    names = [row["name"] for row in probe["depths"]]
    assert names == ["input", "block0", "block1", "block2"]
    assert test[-1] > test[0] + 0.05  # the last block beats the raw input
    assert all(b >= a - 0.02 for a, b in zip(test[1:], test[2:]))  # and blocks do not lose separability
    assert json.loads((result.run_dir / "probe.json").read_text())["depths"] == probe["depths"]

    done = run_cli("probe", str(result.run_dir), "--limit", "500")
    assert done.returncode == 0, done.stderr
    assert "block2" in done.stdout and "test acc %" in done.stdout


def test_probe_is_refused_on_runs_whose_recipe_does_not_list_it(tiny, tmp_path):
    """``probe`` is among the greedy recipe's ``commands`` only: another recipe's run is refused with exit 2,
    naming the recipe that has it, before any data is read."""
    result = peerlearn.train(tiny(train={"epochs": 1}), out=tmp_path)
    with pytest.raises(ConfigError, match="recipe 'independent'; it applies to runs of greedy"):
        probe_run(result.run_dir)
    done = run_cli("probe", str(result.run_dir))
    assert done.returncode == 2 and "applies to runs of greedy" in done.stderr and "Traceback" not in done.stderr
    assert not (result.run_dir / "probe.json").exists()


def test_depth_features_refuse_a_network_without_blocks(tiny):
    _, _, recipe = prepare_run(load_config(tiny()))
    with pytest.raises(PeerlearnError, match="layerwise_cnn"):
        depth_features(recipe.cohort["a"].model, recipe.eval_streams["val"])
