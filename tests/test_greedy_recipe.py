"""The greedy recipe: frozen prefix, per-stage settings, prefix cache, resume, end-to-end switch, effects."""

from __future__ import annotations

import json

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.engine.checkpoint import load_state, load_weights
from peerlearn.engine.trainer import Callback, Trainer
from peerlearn.errors import ConfigError
from peerlearn.recipes.greedy import GreedyRecipe

from conftest import run_cli

NET = {"name": "net", "model": "layerwise_cnn",
       "model_args": {"blocks": 3, "width": 8, "k": 2, "downsample_at": [1]}}


def greedy_config(tiny, **sections):
    greedy = {"epochs": 2, **sections.pop("greedy", {})}
    return tiny(recipe="greedy", members=[sections.pop("net", NET)], greedy=greedy, **sections)


def _weights(run_dir):
    return load_weights(run_dir / "model.safetensors")


class StateRecorder(Callback):
    """Copies of every block's and head's parameters and buffers at the end of every epoch."""

    def __init__(self):
        self.records = []

    def on_epoch_end(self, trainer, results):
        model = next(iter(trainer.cohort)).model
        self.records.append((trainer.stages[trainer.position.stage].name,
                             {k: v.clone() for k, v in model.state_dict().items()}))


@pytest.mark.parametrize("cache", ["on", "off"])
def test_stage_j_changes_only_block_j_and_its_head(tiny, tmp_path, monkeypatch, cache):
    recorder = StateRecorder()
    monkeypatch.setattr(GreedyRecipe, "callbacks", lambda self: [recorder])
    peerlearn.train(greedy_config(tiny, greedy={"cache": cache}), out=tmp_path)
    by_stage = {}
    for stage, state in recorder.records:
        by_stage.setdefault(stage, []).append(state)
    assert list(by_stage) == ["block0", "block1", "block2"]
    keys = by_stage["block0"][0].keys()
    assert any("running_mean" in k for k in keys)  # k = 2: the frozen blocks carry BN statistics
    for j, stage in enumerate(["block1", "block2"], start=1):
        before = by_stage[f"block{j - 1}"][-1]  # the end of the previous stage
        for after in by_stage[stage]:
            for key in keys:
                owner = ".".join(key.split(".")[:2])
                frozen = owner in {f"blocks.{i}" for i in range(j)} or (owner.startswith("heads.")
                                                                          and owner != f"heads.{j}")
                if frozen:  # parameters AND buffers (BN running mean/var, batch counts) untouched
                    assert torch.equal(after[key], before[key]), (stage, key)
        trained = [k for k in keys if k.startswith(f"blocks.{j}.") and "weight" in k]
        assert any(not torch.equal(by_stage[stage][-1][k], before[k]) for k in trained)
        assert any(not torch.equal(by_stage[stage][-1][k], before[k]) for k in keys if k.startswith(f"heads.{j}."))


def test_greedy_learns_and_reports_heads_and_ensemble(tiny, tmp_path):
    result = peerlearn.train(greedy_config(tiny, greedy={"epochs": 3}), out=tmp_path)
    summary = result.summary
    assert summary["members"]["net"]["test"]["top1"] > 0.9
    greedy = summary["greedy"]
    heads = greedy["test"]["heads_top1"]
    assert len(heads) == 3
    assert heads[-1] == pytest.approx(summary["members"]["net"]["test"]["top1"])  # final = last head
    assert heads[-1] > heads[0]  # deeper heads classify better
    assert greedy["test"]["ensemble"]["top1"] > 0.9
    assert greedy["stage_epochs"] == [3, 3, 3]
    assert set(greedy["stage_seconds"]) == {"block0", "block1", "block2"}
    assert all(seconds > 0 for seconds in greedy["stage_seconds"].values())
    stages = [json.loads(l)["stage"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["kind"] == "eval"]
    assert stages == ["block0"] * 3 + ["block1"] * 3 + ["block2"] * 3


def test_each_stage_has_its_own_epochs_optimizer_and_schedule(tiny, tmp_path):
    config = greedy_config(tiny, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                           greedy={"epochs": 1, "stages": {1: {"epochs": 3, "optim": {"lr": 0.02}},
                                                           2: {"epochs": 2, "optim": {"name": "adam", "lr": 0.003},
                                                               "schedule": {"name": "step", "step_size": 1,
                                                                            "gamma": 0.5}}}})
    result = peerlearn.train(config, out=tmp_path)
    lines = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [(l["stage"], l["lr"]["net"]) for l in lines if l["kind"] == "train"]
    assert lrs == [("block0", 0.05), ("block1", 0.02), ("block1", 0.02), ("block1", 0.02),
                   ("block2", 0.0015), ("block2", 0.00075)]  # logged after each epoch's schedule step
    assert result.summary["greedy"]["stage_epochs"] == [1, 3, 2]
    optimizer = result.cohort["net"].optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in result.cohort["net"].model.stage_parameters(2)}


def test_prefix_cache_gives_the_same_training_without_recomputing_the_prefix(tiny, tmp_path, monkeypatch):
    calls = {"prefix_in_steps": 0}
    original_step = GreedyRecipe.step

    def counting_step(self, batch):
        model = self.model
        handle = model.blocks[0].register_forward_hook(lambda *a: calls.__setitem__(
            "prefix_in_steps", calls["prefix_in_steps"] + (self.active_block > 0)))
        try:
            return original_step(self, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(GreedyRecipe, "step", counting_step)
    cached = peerlearn.train(greedy_config(tiny, greedy={"cache": "auto"}), out=tmp_path / "on")
    assert calls["prefix_in_steps"] == 0  # stages 1 and 2 never ran block 0 in a training step
    report = cached.summary["greedy"]["cache"]
    assert [report[s]["cached"] for s in ("block0", "block1", "block2")] == [False, True, True]
    uncached = peerlearn.train(greedy_config(tiny, greedy={"cache": "off"}), out=tmp_path / "off")
    assert calls["prefix_in_steps"] > 0
    for key, value in _weights(cached.run_dir).items():
        torch.testing.assert_close(value, _weights(uncached.run_dir)[key], rtol=1e-4, atol=1e-5)


def test_cache_falls_back_when_too_big_or_augmented(tiny, tmp_path):
    small = peerlearn.train(greedy_config(tiny, greedy={"epochs": 1, "cache_max_mb": 0.01}), out=tmp_path)
    report = small.summary["greedy"]["cache"]["block1"]
    assert report["cached"] is False and "cache_max_mb" in report["reason"]
    assert report["bytes"] > 0.01 * 2 ** 20
    augmented = peerlearn.train(greedy_config(tiny, greedy={"epochs": 1}, data={"augment": {"jitter": 1}}),
                                out=tmp_path)
    assert augmented.summary["greedy"]["cache"]["block2"] == {"block": 2, "cached": False,
                                                             "reason": "data is augmented"}
    with pytest.raises(ConfigError, match="greedy.cache"):
        prepare_run(load_config(greedy_config(tiny, greedy={"cache": "on"}, data={"augment": {"flip": True}})))


class _Interrupt(Exception):
    pass


def test_resume_in_the_middle_of_stage_two_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    config = greedy_config(tiny, greedy={"epochs": 2, "stages": {1: {"schedule": {"name": "cosine"}}}},
                           train={"checkpoint_every_steps": 5})
    full = peerlearn.train(config, out=tmp_path / "full")

    original = GreedyRecipe.step

    def step_then_die(self, batch):
        position = self.trainer.position
        if position.stage == 1 and position.epoch == 1 and position.step_in_epoch == 7:
            raise _Interrupt
        return original(self, batch)

    monkeypatch.setattr(GreedyRecipe, "step", step_then_die)
    with pytest.raises(_Interrupt):
        peerlearn.train(config, out=tmp_path / "cut")
    monkeypatch.setattr(GreedyRecipe, "step", original)
    run_dir = next((tmp_path / "cut").iterdir())
    position = load_state(run_dir / "checkpoint.safetensors")["position"]
    assert position["stage"] == 1 and position["epoch"] == 1 and 0 < position["step_in_epoch"] <= 7
    resumed = peerlearn.train(resume=run_dir)
    for key, value in _weights(full.run_dir).items():
        assert torch.equal(value, _weights(resumed.run_dir)[key]), key
    assert resumed.summary["greedy"]["cache"] == full.summary["greedy"]["cache"]


def test_end_to_end_switch_trains_every_block_with_the_last_head(tiny, tmp_path):
    result = peerlearn.train(greedy_config(tiny, greedy={"mode": "end_to_end", "epochs": 4}), out=tmp_path)
    assert result.summary["members"]["net"]["test"]["top1"] > 0.85
    assert result.summary["greedy"]["stage_epochs"] == [4]
    stages = {json.loads(l)["stage"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"end_to_end"}
    _, _, fresh = prepare_run(load_config(greedy_config(tiny, greedy={"mode": "end_to_end"})))
    initial = fresh.model.state_dict()
    final = result.cohort["net"].model.state_dict()
    for key in initial:
        changed = not torch.equal(initial[key], final[key])
        if key.startswith(("blocks.", "heads.2.")) and key.endswith("weight"):
            assert changed, key  # every block and the last head learn together
        if key.startswith(("heads.0.", "heads.1.")):
            assert not changed, key  # the auxiliary heads of inner blocks are not used


def test_bad_greedy_configs_stop_before_training(tiny, tmp_path):
    with pytest.raises(ConfigError, match="layerwise_cnn"):
        prepare_run(load_config(greedy_config(tiny, net={"name": "a", "model": "small_cnn"})))
    with pytest.raises(ConfigError, match="exactly one"):
        prepare_run(load_config(tiny(recipe="greedy")))
    with pytest.raises(ConfigError, match=r"greedy.stages.5.*allowed: 0, 1, 2"):
        prepare_run(load_config(greedy_config(tiny, greedy={"stages": {5: {"epochs": 1}}})))
    with pytest.raises(ConfigError, match=r"greedy.stages.1.optim.learning_rate"):
        load_config(greedy_config(tiny, greedy={"stages": {1: {"optim": {"learning_rate": 0.1}}}}))
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(greedy_config(tiny, greedy={"mode": "layerwise"})))
    done = run_cli("train", str(path), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "greedy.mode" in done.stderr and "end_to_end" in done.stderr and "Traceback" not in done.stderr


def test_shared_regularisers_reach_every_greedy_stage(tiny, tmp_path, monkeypatch):
    """The CE goes through Recipe.supervised_loss, with the head's features when the centre loss needs them."""
    seen = []
    original = GreedyRecipe.supervised_loss

    def spy(self, member, logits, labels, features=None):
        seen.append((self.active_block, None if features is None else features.shape[1]))
        return original(self, member, logits, labels, features)

    monkeypatch.setattr(GreedyRecipe, "supervised_loss", spy)
    result = peerlearn.train(greedy_config(tiny, greedy={"epochs": 1}, regularize={"center_loss": 0.01,
                                                                                 "label_smoothing": 0.1}),
                             out=tmp_path)
    widths = {block: dim for block, dim in seen}
    assert widths == {0: 8 * 4, 1: 16 * 4, 2: 16 * 4}  # each head's 2×2-pooled features
    assert result.summary["members"]["net"]["test"]["top1"] > 0.5
