"""The step contract (issue: one step contract): recipes written outside the package — one with an auxiliary
module (a gate), one whose members are branches on a shared trunk — each in at most 80 lines, trained from the
CLI by reference, resumed bit-exactly after SIGKILL, evaluated and exported from a new process with the
auxiliary's (or the branches') rows present."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import peerlearn
from peerlearn.errors import ConfigError
from conftest import run_cli, tiny_config
from test_reliability_resume import _assert_same_tensors, _run_dir, kill_and_resume

RECIPES = Path(__file__).parent / "contract_recipes"


def gated_config(epochs: int = 2) -> dict:
    return tiny_config(name="gated", recipe="gated_pair:GatedPairRecipe",
                       members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8, "dropout": 0.2}},
                                {"name": "b", "model": "mlp", "model_args": {"widths": [32]}}],
                       auxiliary={"gate": {"optim": {"name": "adam", "lr": 0.01}}},
                       schedule={"name": "onecycle"}, data={"augment": {"flip": True}},
                       train={"epochs": epochs, "checkpoint_every_steps": 2})


def trunk_config(epochs: int = 2) -> dict:
    return tiny_config(name="trunk", recipe="shared_trunk:SharedTrunkRecipe",
                       members=[{"name": "net", "model": "shared_trunk:trunk_net", "model_args": {"branches": 3}}],
                       schedule={"name": "cosine"}, train={"epochs": epochs, "checkpoint_every_steps": 2})


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.setenv("PYTHONPATH", str(RECIPES))


def test_recipes_of_ones_own_are_short():
    for path in RECIPES.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 80, path


@pytest.mark.parametrize("make_config, rows", [(gated_config, {"a", "b", "gate", "ensemble"}),
                                               (trunk_config, {"net", "net0", "net1", "net2", "ensemble"})])
def test_recipe_by_reference_trains_resumes_exactly_and_reads_back(on_path, tmp_path, make_config, rows):
    config = make_config()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    full = peerlearn.train(config, out=tmp_path / "full")
    summary = full.summary
    assert rows - {"ensemble"} <= set(summary["members"])
    record = json.loads((full.run_dir / "run.json").read_text())
    assert record["recipe_class"] == config["recipe"]
    # killed twice at random steps, resumed from the CLI: the same tensors as the uninterrupted run
    kill_and_resume(path, tmp_path / "cut", kills=2, total_steps=summary["steps"], seed=3)
    cut = _run_dir(tmp_path / "cut")
    _assert_same_tensors(full.run_dir / "model.safetensors", cut / "model.safetensors")
    _assert_same_tensors(full.run_dir / "checkpoint.safetensors", cut / "checkpoint.safetensors")
    # a new process reads the run: every row of the summary, the auxiliary's / the branches' included
    done = run_cli("evaluate", str(cut), "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["classification"]
    assert rows <= set(scores)
    for name in rows:
        expected = summary["members"][name]["test"]["top1"] if name != "ensemble" else summary["ensemble"]["test"]["top1"]
        assert scores[name]["top1"] == pytest.approx(expected, abs=1e-6), name
    exported = "gate" if "gate" in rows else "net1"
    done = run_cli("export", str(cut), "--member", exported, "--format", "onnx", "--out", str(tmp_path / "x"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x" / f"{exported}.onnx").is_file()


def test_gate_is_trained_checkpointed_and_recorded(on_path, tmp_path):
    run = peerlearn.train(gated_config(epochs=1), out=tmp_path)
    gate = run.recipe.cohort["gate"]
    assert gate.kind == "auxiliary" and gate.optimizer.__class__.__name__ == "Adam"
    assert gate.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.01) or gate.optimizer.defaults["lr"]
    from safetensors.torch import load_file

    weights = load_file(str(run.run_dir / "model.safetensors"))
    assert torch.equal(weights["gate.linear.weight"], gate.model.linear.weight.detach())
    record = json.loads((run.run_dir / "run.json").read_text())
    row = next(m for m in record["members"] if m["name"] == "gate")
    assert row == {"name": "gate", "role": "auxiliary", "module": {"in_channels": 1, "members": ["a", "b"]},
                   "predicts": True}
    assert "gate" in record["evaluated"] and record["ensemble"] == ["a", "b"]
    # the gate moved: it learned from CE(z_e, y)
    fresh = run.recipe.build_auxiliary("gate", row["module"])
    assert not torch.equal(fresh.linear.weight, gate.model.linear.weight.detach().cpu())


def test_shared_trunk_views_share_weights_and_the_trunk_gets_every_branch_gradient(on_path, tmp_path):
    run = peerlearn.train(trunk_config(epochs=1), out=tmp_path)
    cohort = run.recipe.cohort
    net = cohort["net"].network
    assert [m.kind for m in cohort] == ["network", "view", "view", "view"]
    assert cohort["net1"].model.trunk is net.trunk and cohort["net1"].model.head is net.heads[1]
    from safetensors.torch import load_file

    saved = load_file(str(run.run_dir / "model.safetensors"))
    assert not any(key.startswith("net0.") for key in saved)  # views are not saved twice
    x = torch.randn(4, 1, 8, 8)
    net.zero_grad()
    sum(head(net.trunk(x)).sum() for head in net.heads).backward()
    together = net.trunk[0].weight.grad.clone()
    separate = torch.zeros_like(together)
    for k in range(3):
        net.zero_grad()
        cohort[f"net{k}"].model(x).sum().backward()
        separate += net.trunk[0].weight.grad
    torch.testing.assert_close(together, separate)


def test_unknown_auxiliary_settings_are_refused(on_path, tmp_path):
    config = gated_config()
    config["auxiliary"] = {"gaet": {"optim": {"lr": 0.1}}}
    with pytest.raises(ConfigError, match="auxiliary.gaet.*its modules: gate"):
        peerlearn.train(config, out=tmp_path)
