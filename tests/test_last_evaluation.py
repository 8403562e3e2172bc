"""The final summary reuses the last epoch's evaluation only when nothing has changed the members since."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import peerlearn
import peerlearn.engine.trainer as trainer_module
from peerlearn.engine.last_evaluation import LastEvaluation
from peerlearn.engine.trainer import Callback

from conftest import tiny_config

RESULTS = {"val": {"a": {"top1": 0.5}}}


@dataclass
class Member:
    name: str
    model: nn.Module


class Quiet(Callback):
    may_change_members = False


def snapshot(members, stage="stage", step=10) -> LastEvaluation:
    return LastEvaluation.take(stage, step, RESULTS, members)


def reuse(memo, members, stage="stage", step=10, callbacks=(Quiet(),)):
    return memo.reusable(stage, step, callbacks, members)


@pytest.fixture
def members():
    torch.manual_seed(0)
    return [Member("a", nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))]


def test_unchanged_members_give_back_a_copy_of_the_results(members):
    memo = snapshot(members)
    found = reuse(memo, members)
    assert found == RESULTS
    found["val"]["a"]["top1"] = 0.0  # the caller's copy: the memo keeps its own
    assert reuse(memo, members) == RESULTS


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "new parameter", "buffer update",
                                    "forward hook", "module swapped", "another model"])
def test_any_change_to_a_member_means_scoring_again(members, change):
    memo = snapshot(members)
    model = members[0].model
    if change == "optimizer step":
        model[0].weight.grad = torch.ones_like(model[0].weight)
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    elif change == "load_state_dict":
        model.load_state_dict(model.state_dict())  # the same values, but written: the version moves
    elif change == "new parameter":
        model[2].bias = nn.Parameter(torch.zeros(2))
    elif change == "buffer update":
        model.train()
        model(torch.randn(5, 3))  # batch norm's running statistics
    elif change == "forward hook":
        model[2].register_forward_hook(lambda module, inputs, output: output + 1)
    elif change == "module swapped":
        model[2] = nn.Linear(4, 2)
    else:
        members[0] = Member("a", nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    assert reuse(memo, members) == {}


def test_another_position_or_a_callback_that_may_change_members_means_scoring_again(members):
    memo = snapshot(members)
    assert reuse(memo, members, step=11) == {}
    assert reuse(memo, members, stage="another stage") == {}
    assert reuse(memo, members, callbacks=(Quiet(), Callback())) == {}  # the default: may change members
    assert reuse(memo, members + [Member("b", nn.Linear(3, 2))]) == {}


def count_evaluations(monkeypatch) -> list[list[str]]:
    """Patch the trainer's evaluate_cohort to record the split of every pass."""
    passes: list[list[str]] = []
    original = trainer_module.evaluate_cohort

    def counting(cohort, stream, *args, **kwargs):
        passes.append(stream)
        return original(cohort, stream, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_cohort", counting)
    return passes


@pytest.mark.parametrize("eval_test", [False, True])
def test_a_dml_run_scores_each_split_once_at_its_end_and_its_summary_equals_the_last_epoch(tmp_path, monkeypatch,
                                                                                         eval_test):
    passes = count_evaluations(monkeypatch)
    train = {"epochs": 2, "progress": "off", "threads": 1, "eval_test": eval_test}
    result = peerlearn.train(tiny_config(recipe="mutual", train=train), out=tmp_path)
    trainer = result.recipe.trainer
    val, test = trainer.eval_streams["val"], trainer.eval_streams["test"]
    # 2 epochs; the summary then scores only what the last epoch did not: the test split, or nothing
    assert passes == ([val, test, val, test] if eval_test else [val, val, test])
    last = trainer.history[-1]
    for split in ("val", "test") if eval_test else ("val",):
        for name in ("a", "b"):
            assert result.summary["members"][name][split] == last[split][name]
        assert result.summary["ensemble"][split] == last[split]["ensemble"]
    # and the reused numbers are those a fresh pass gives for the final weights
    fresh = trainer.evaluate(trainer.stages[-1], ["val", "test"])
    assert fresh["val"] == last["val"]
    for name in ("a", "b"):
        assert result.summary["members"][name]["test"] == fresh["test"][name]


def test_a_callback_that_changes_members_after_the_last_epoch_is_seen_in_the_summary(tmp_path, monkeypatch):
    """A callback keeping the default may_change_members, which scales member a's last layer at the end:
    the summary scores validation again and reports the changed member."""
    from peerlearn.recipes.mutual import MutualRecipe

    class Shrink(Callback):
        def on_fit_end(self, trainer):
            with torch.no_grad():
                for parameter in trainer.cohort["a"].model.parameters():
                    parameter.mul_(0.0)  # a constant network: top-1 falls to one class's share

    monkeypatch.setattr(MutualRecipe, "callbacks", lambda self: [Shrink()])
    passes = count_evaluations(monkeypatch)
    train = {"epochs": 2, "progress": "off", "threads": 1, "eval_test": False}
    result = peerlearn.train(tiny_config(recipe="mutual", train=train), out=tmp_path)
    trainer = result.recipe.trainer
    assert len(passes) == 4  # 2 epochs (validation only), then validation and test again
    assert result.summary["members"]["a"]["val"]["top1"] < trainer.history[-1]["val"]["a"]["top1"] - 0.3
    assert result.summary["members"]["b"]["val"] == trainer.history[-1]["val"]["b"]
