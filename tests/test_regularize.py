"""Regularisers shared by every recipe: hand-computed values, early stopping, and their effects."""

import math

import pytest
import torch
from torch import nn

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import EarlyStoppingConfig, RegularizeConfig, load_config
from peerlearn.engine.checkpoint import load_state, load_weights
from peerlearn.engine.early_stopping import BEST_WEIGHTS_NAME, EarlyStopping
from peerlearn.engine.trainer import Position
from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.losses import center_loss, l1_penalty, l2_penalty, update_centers
from peerlearn.regularize import Regularizer, penalized_weights
from conftest import train_interrupted_at_evaluation


# ------------------------------------------------------------------ hand-computed values
def test_l1_and_l2_penalties_by_hand():
    weights = [torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([[-0.5]])]
    assert float(l1_penalty(weights)) == pytest.approx(1 + 2 + 3 + 0 + 0.5)
    assert float(l2_penalty(weights)) == pytest.approx(0.5 * (1 + 4 + 9 + 0 + 0.25))


def test_penalties_cover_weights_not_biases_or_batchnorm():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)  # frozen: not penalised either
    chosen = penalized_weights(model)
    assert len(chosen) == 1 and chosen[0] is model[0].weight


def test_label_smoothing_by_hand():
    # p = softmax([ln 3, 0]) = [0.75, 0.25]; ε = 0.2, C = 2: target [0.9, 0.1]
    regularizer = Regularizer(RegularizeConfig(label_smoothing=0.2), num_classes=2)
    loss = regularizer.loss("a", None, torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0]))
    assert float(loss) == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), rel=1e-6)


def test_regularizer_adds_l1_and_l2_of_the_member_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    logits, labels = model(torch.randn(5, 3)), torch.tensor([0, 1, 1, 0, -1])
    regularizer = Regularizer(RegularizeConfig(l1=0.01, l2=0.1), num_classes=2)
    expected = (nn.functional.cross_entropy(logits[:4], labels[:4])
                + 0.01 * (model[0].weight.abs().sum() + model[2].weight.abs().sum())
                + 0.1 * 0.5 * (model[0].weight.pow(2).sum() + model[2].weight.pow(2).sum()))
    torch.testing.assert_close(regularizer.loss("a", model, logits, labels), expected)
    assert set(regularizer.last_parts["a"]) == {"ce", "l1", "l2"}


def test_center_loss_by_hand_and_its_gradient():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [9.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, -1])  # the unlabelled row is ignored
    centers = torch.tensor([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    # ‖(0,1)‖² + ‖(2,3)‖² + ‖(−2,−2)‖² = 1 + 13 + 8 = 22, over m = 3, times ½
    loss = center_loss(features, labels, centers)
    assert float(loss.detach()) == pytest.approx(22 / 6)
    loss.backward()
    expected = torch.tensor([[0.0, 1.0], [2.0, 3.0], [-2.0, -2.0], [0.0, 0.0]]) / 3
    torch.testing.assert_close(features.grad, expected)


def test_center_update_follows_wen_et_al():
    centers = torch.tensor([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [9.0, 9.0]])
    update_centers(centers, features, torch.tensor([0, 0, 1, -1]), alpha=0.5)
    # class 0: Δ = (2·(1,1) − (4,6)) / 3 = (−2/3, −4/3); c ← c − ½Δ = (4/3, 5/3)
    # class 1: Δ = ((2,2) − (0,0)) / 2 = (1, 1);           c ← (1.5, 1.5);  class 2 absent: unchanged
    torch.testing.assert_close(centers, torch.tensor([[4 / 3, 5 / 3], [1.5, 1.5], [5.0, 5.0]]))


def test_regularizer_center_loss_moves_centres_only_in_training_steps():
    regularizer = Regularizer(RegularizeConfig(center_loss=0.5, center_alpha=1.0), num_classes=2)
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])
    features = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    loss = regularizer.loss("a", None, logits, labels, features)  # centres start at 0
    assert float(loss) == pytest.approx(math.log(2) + 0.5 * 0.5 * (4 + 16) / 2)
    # α = 1: each centre jumps to (n/(1+n))·mean = half its single feature
    torch.testing.assert_close(regularizer.centers["a"], torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    with torch.no_grad():
        regularizer.loss("a", None, logits, labels, features)
    torch.testing.assert_close(regularizer.centers["a"], torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(PeerlearnError, match="center_loss"):
        regularizer.loss("a", None, logits, labels, None)


# ------------------------------------------------------------------ early stopping
class _FakeTrainer:
    def __init__(self, run_dir):
        self.position, self.stage_done, self.run_dir, self.cohort = Position(), False, run_dir, []


@pytest.mark.parametrize("metric, values, stop_epoch, best_epoch", [
    ("top1", [0.5, 0.6, 0.6, 0.55, 0.9], 4, 2),      # equal is not better; 2 evaluations without gain
    ("nll", [1.0, 0.8, 0.79, 0.85, 0.5], 4, 2),      # min_delta 0.05: 0.79 is no real gain
])
def test_early_stopping_counts_patience_and_min_delta(tmp_path, metric, values, stop_epoch, best_epoch):
    callback = EarlyStopping(EarlyStoppingConfig(enabled=True, metric=metric, patience=2, min_delta=0.05
                                                 if metric == "nll" else 0.0, restore_best=False))
    trainer = _FakeTrainer(tmp_path)
    for epoch, value in enumerate(values, start=1):
        trainer.position.global_epoch = epoch
        callback.on_epoch_end(trainer, {"val": {"a": {metric: value}, "b": {metric: value},
                                                "ensemble": {metric: -1.0}}})
        if trainer.stage_done:
            break
    assert callback.stopped_epoch == stop_epoch and callback.best_epoch == best_epoch


def test_early_stopping_halts_and_restores_the_best_epoch(tiny, tmp_path):
    # an improvement must exceed 0.5 in accuracy: only the first evaluation counts, so training stops at
    # epoch 1 + patience and the best weights are those of epoch 1
    result = peerlearn.train(tiny(train={"epochs": 20, "progress": "off", "threads": 1},
                                  regularize={"early_stopping": {"enabled": True, "patience": 2, "min_delta": 0.5}}),
                             out=tmp_path)
    stopping = result.summary["early_stopping"]
    assert (stopping["best_epoch"], stopping["stopped_epoch"], result.summary["epochs"]) == (1, 3, 3)
    final = load_weights(result.run_dir / "model.safetensors")
    best = load_weights(result.run_dir / BEST_WEIGHTS_NAME)
    last = load_state(result.run_dir / "checkpoint.safetensors")["members"]["a"]["model"]
    assert final.keys() == best.keys()
    for key in final:
        torch.testing.assert_close(final[key], best[key])
    assert any(not torch.equal(final[f"a.{k}"], v) for k, v in last.items())  # epoch 3 differs from epoch 1
    history = [h for h in result.recipe.trainer.history if h["epoch"] == 1][0]
    assert result.summary["members"]["a"]["val"]["top1"] == pytest.approx(history["val"]["a"]["top1"])


def test_early_stopping_config_errors(tiny, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match="early_stopping.of"):
        peerlearn.train(tiny(regularize={"early_stopping": {"enabled": True, "of": "zz"}}), out=out)
    with pytest.raises(ConfigError, match="validation split"):
        peerlearn.train(tiny(data={"source": "digits", "val_fraction": 0.0},
                             regularize={"early_stopping": {"enabled": True}}), out=out)
    assert not out.exists()  # refused before a run directory was made
    with pytest.raises(ConfigError, match="regularize.l1"):
        load_config(tiny(regularize={"l1": -1}))


# ------------------------------------------------------------------ effects, end to end
def _mlp_run(tiny, tmp_path, epochs=8, **regularize):
    config = tiny(members=[{"name": "a", "model": "mlp", "model_args": {"widths": [64]}}], recipe="independent",
                  train={"epochs": epochs, "progress": "off", "threads": 1}, regularize=regularize)
    return peerlearn.train(config, out=tmp_path)


def test_l1_makes_weights_sparser_and_still_learns(tiny, tmp_path):
    plain, sparse = _mlp_run(tiny, tmp_path), _mlp_run(tiny, tmp_path, l1=1e-3)

    def small_fraction(result):
        weights = torch.cat([w.detach().flatten() for w in penalized_weights(result.cohort["a"].model)])
        return float((weights.abs() < 1e-2).float().mean())

    assert small_fraction(sparse) > small_fraction(plain) + 0.2
    assert sparse.member_accuracy("test")["a"] > 0.85


def test_label_smoothing_lowers_confidence(tiny, tmp_path):
    plain, smooth = _mlp_run(tiny, tmp_path), _mlp_run(tiny, tmp_path, label_smoothing=0.3)

    def confidence(result):
        model = result.cohort["a"].model.eval()
        x = result.recipe.eval_streams["test"]
        with torch.no_grad():
            return torch.cat([model(b.x).softmax(1).max(1).values for _, b in x.epoch(0)]).mean()

    assert confidence(smooth) < confidence(plain) - 0.1
    assert smooth.member_accuracy("test")["a"] > 0.85


def _compactness(result) -> float:
    """Mean distance of test features to their class mean, over the mean distance between class means."""
    model = result.cohort["a"].model.eval()
    with torch.no_grad():
        batches = list(result.recipe.eval_streams["test"].epoch(0))
        feats = torch.cat([model.features(b.x) for _, b in batches])
        labels = torch.cat([b.y for _, b in batches])
    means = torch.stack([feats[labels == c].mean(0) for c in range(10)])
    within = (feats - means[labels]).norm(dim=1).mean()
    return float(within / torch.pdist(means).mean())


@pytest.mark.parametrize("recipe", ["independent", "mutual"])
def test_center_loss_makes_classes_compact_in_every_recipe(tiny, tmp_path, recipe):
    def run(weight):
        config = tiny(recipe=recipe, members=[{"name": n, "model": "mlp", "model_args": {"widths": [64]}}
                                              for n in ("a", "b")],
                      train={"epochs": 6, "progress": "off", "threads": 1},
                      regularize={"center_loss": weight, "center_alpha": 0.5})
        return peerlearn.train(config, out=tmp_path)

    plain, compact = run(0.0), run(0.2)
    assert set(compact.recipe.regularizer.centers) == {"a", "b"}  # the recipe passed features for both
    assert _compactness(compact) < 0.8 * _compactness(plain)
    assert compact.member_accuracy("test")["a"] > 0.85
    state = compact.recipe.extra_state()  # centres travel in checkpoints
    restored = Regularizer(compact.config.regularize, 10)
    restored.load_state_dict(state["regularize"])
    torch.testing.assert_close(restored.centers["a"], compact.recipe.regularizer.centers["a"].cpu())


def test_sequential_dml_passes_features_for_center_loss(tiny):
    config = load_config(tiny(recipe="mutual", mutual={"update": "sequential"}, regularize={"center_loss": 0.1}))
    _, _, recipe = prepare_run(config)
    _, batch = next(iter(recipe.train_stream.epoch(0)))
    log = recipe.step(batch)
    assert "a/center" in log and "b/center" in log and torch.count_nonzero(recipe.regularizer.centers["b"]) > 0


def test_val_size_draws_validation_from_outside_the_subset(tiny):
    config = load_config(tiny(data={"source": "digits", "train_subset": 300, "val_size": 200}))
    data, _, _ = prepare_run(config)
    assert (len(data.train), len(data.val)) == (300, 200)
    train_rows = {tuple(r.tolist()) for r in data.train.x.flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in data.val.x.flatten(1))
    assert overlap <= 2  # digits has a few duplicate images; no item is in both splits
    with pytest.raises(PeerlearnError, match="val_size"):
        prepare_run(load_config(tiny(data={"source": "digits", "train_subset": 1300, "val_size": 200})))


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet20", "cifar_resnet", "mobilenet", "wrn"])
def test_models_take_a_dropout_option_that_acts_in_training_only(name):
    from peerlearn.models import create_model

    torch.manual_seed(0)
    args = {"depth": 10, "widen_factor": 1} if name == "wrn" else {"width_mult": 0.25} if name == "mobilenet" else {}
    model = create_model(name, num_classes=3, in_channels=1, image_size=8, dropout=0.5, **args)
    x = torch.randn(4, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # a fresh dropout mask each pass
    model.eval()
    assert torch.equal(model(x), model(x))


def test_resume_keeps_centres_and_early_stopping_state(tiny, tmp_path, monkeypatch):
    config = tiny(members=[{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in ("a", "b")],
                  train={"epochs": 6, "progress": "off", "threads": 1},
                  regularize={"center_loss": 0.1, "early_stopping": {"enabled": True, "patience": 2, "min_delta": 0.5}})
    full = peerlearn.train(config, out=tmp_path / "full")
    # crash at epoch 3's evaluation: the checkpoint of epoch 2 (one evaluation waited) exists
    resumed = peerlearn.train(resume=train_interrupted_at_evaluation(config, tmp_path / "cut", 3, monkeypatch))
    assert resumed.summary["early_stopping"] == full.summary["early_stopping"]
    assert full.summary["early_stopping"]["stopped_epoch"] == 3
    for name in ("a", "b"):
        torch.testing.assert_close(resumed.recipe.regularizer.centers[name], full.recipe.regularizer.centers[name])
