"""The trainer: determinism, outputs of a run, exact resume, optimizers and schedules."""

import json

import pytest
import torch
from safetensors.torch import load_file

import peerlearn
from peerlearn.config import OptimConfig, ScheduleConfig
from peerlearn.engine.checkpoint import flatten_state, load_state, save_state, unflatten_state
from peerlearn.engine.optim import build_optimizer, build_schedule
from conftest import train_interrupted_at_evaluation


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_a_run_leaves_config_metrics_tensorboard_summary_and_weights(tiny, tmp_path):
    result = peerlearn.train(tiny(recipe="mutual", tracking={"tensorboard": True}), out=tmp_path)
    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    for member in ("a", "b"):
        for split in ("val", "test"):
            assert {"top1", "top5"} <= set(summary["members"][member][split])
    assert {"val", "test"} <= set(summary["ensemble"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]
    # the saved config is the resolved one, and re-running it reproduces the run
    again = peerlearn.train(run / "config.yaml", out=tmp_path)
    assert again.run_dir != run
    for key, value in _weights(run).items():
        assert torch.equal(value, _weights(again.run_dir)[key])


def test_run_directories_are_never_overwritten(tiny, tmp_path):
    dirs = {peerlearn.train(tiny(train={"epochs": 1, "progress": "off"}), out=tmp_path).run_dir for _ in range(3)}
    assert len(dirs) == 3


def test_different_seeds_give_different_weights(tiny, tmp_path):
    a = peerlearn.train(tiny(train={"epochs": 1, "progress": "off"}), out=tmp_path)
    b = peerlearn.train(tiny(seed=1, train={"epochs": 1, "progress": "off"}), out=tmp_path)
    assert not torch.equal(_weights(a.run_dir)["a.classifier.weight"], _weights(b.run_dir)["a.classifier.weight"])


@pytest.mark.parametrize("update", ["simultaneous", "sequential"])
def test_resume_after_interruption_equals_uninterrupted_run(tiny, tmp_path, monkeypatch, update):
    config = tiny(recipe="mutual", mutual={"update": update},
                  members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8, "dropout": 0.3}},
                           {"name": "b", "model": "mlp", "model_args": {"widths": [32], "dropout": 0.2},
                            "optim": {"name": "adam", "lr": 0.003}}],
                  data={"source": "digits", "augment": {"crop_padding": 1, "flip": True}},
                  schedule={"name": "onecycle"}, train={"epochs": 4, "progress": "off"})
    full = peerlearn.train(config, out=tmp_path / "full")

    # crash during epoch 3's evaluation: its checkpoint is not written yet
    run_dir = train_interrupted_at_evaluation(config, tmp_path / "cut", 3, monkeypatch)
    assert load_state(run_dir / "checkpoint.safetensors")["position"]["global_epoch"] == 2
    resumed = peerlearn.train(resume=run_dir)
    for key, value in _weights(full.run_dir).items():
        assert torch.equal(value, _weights(resumed.run_dir)[key]), key
    epochs = [json.loads(l)["epoch"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["kind"] == "eval"]
    assert epochs == [1, 2, 3, 4]


def test_checkpoint_state_round_trips_nested_values(tmp_path):
    state = {"a": [1, 2.5, None, "x", (3, 4)], "t": torch.arange(5), 7: {"nested": torch.ones(2, 2)},
             "flag": True}
    skeleton, tensors = flatten_state(state)
    assert unflatten_state(json.loads(json.dumps(skeleton)), tensors).keys() == state.keys()
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["a"] == [1, 2.5, None, "x", (3, 4)] and back["flag"] is True
    assert torch.equal(back["t"], state["t"]) and torch.equal(back[7]["nested"], torch.ones(2, 2))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_builds_and_steps(name):
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.01, nesterov=name == "sgd"))
    model(torch.randn(4, 3)).sum().backward()
    before = model.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.weight)


def test_schedules_follow_their_formulas():
    def lrs(config, epochs=6, steps=1):
        optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
        schedule = build_schedule(optimizer, config, epochs, steps)
        values = []
        for _ in range(epochs):
            values.append(optimizer.param_groups[0]["lr"])
            for _ in range(steps):
                optimizer.step()
                schedule.step("step")
            schedule.step("epoch")
        return values

    assert lrs(ScheduleConfig(name="step", step_size=2, gamma=0.1)) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lrs(ScheduleConfig(name="multistep", milestones=[1, 4], gamma=0.5)) == pytest.approx(
        [0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
    cosine = lrs(ScheduleConfig(name="cosine", min_lr=0.0), epochs=4)
    assert cosine[0] == pytest.approx(0.1) and cosine[2] == pytest.approx(0.05)
    onecycle = lrs(ScheduleConfig(name="onecycle", max_lr=0.1, warmup_fraction=0.5), epochs=2, steps=5)
    assert onecycle[0] < 0.01 and max(onecycle) <= 0.1


def test_non_finite_loss_stops_the_run_naming_member_and_checkpoint(tiny, tmp_path):
    from peerlearn.errors import TrainingError

    with pytest.raises(TrainingError, match=r"member 'a'.*not finite.*checkpoint"):
        peerlearn.train(tiny(optim={"name": "sgd", "lr": 1e30, "momentum": 0.9}, train={"epochs": 3, "progress": "off"}),
                        out=tmp_path)
