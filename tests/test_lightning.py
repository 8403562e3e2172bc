"""peerlearn.lightning under Lightning's own Trainer on the CPU: the docs' example as printed (two epochs of
DML and of distillation, a checkpoint reloaded), the modules' losses against peerlearn.losses, frozen
teachers, and the message when Lightning is missing."""

import importlib
import sys

import pytest
import torch
from torch import nn

from markdown_code import run_page
from peerlearn.losses import distillation_loss, mutual_learning_losses, teacher_probs


def test_the_lightning_page_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its CSV logs and checkpoints go under lightning_runs/
    torch.set_num_threads(1)
    ns = run_page("lightning.md")
    metrics = ns["dml_trainer"].callback_metrics
    assert ns["dml_trainer"].current_epoch == 2  # two epochs done
    assert min(float(metrics[f"val/{m}/top1"]) for m in ("a", "b", "ensemble")) > 0.8  # it learns (chance 0.1)
    assert float(ns["kd_trainer"].callback_metrics["val/top1"]) > 0.5
    # Lightning's checkpoint reloaded: same weights, same settings
    restored = ns["restored"]
    assert restored.hparams.weight == 1.0 and restored.hparams.temperature == 1.0
    for key, value in ns["cohort"].state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    # the CSV logger recorded both epochs' validation
    logged = sorted((tmp_path / "lightning_runs").rglob("metrics.csv"))
    assert len(logged) == 2 and "val/ensemble/top1" in logged[0].read_text()
    assert "student val top-1:" in capsys.readouterr().out


def _mlp(width=8):
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 4))


def test_the_cohort_step_is_the_sum_of_mutual_learning_losses():
    from peerlearn.lightning import MutualLearningModule

    torch.manual_seed(0)
    module = MutualLearningModule([_mlp(), _mlp(), _mlp()], weight=0.5, temperature=2.0, divergence="js",
                                  teacher="ensemble")
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    x, y = torch.randn(10, 6), torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3, -1])
    got = module.training_step((x, y), 0)
    members = list(module.members.values())
    expected = sum(mutual_learning_losses([m(x) for m in members], y, 0.5, 2.0, "js", "ensemble"))
    torch.testing.assert_close(got, expected)
    assert list(module.members) == ["member0", "member1", "member2"]
    with pytest.raises(ValueError, match="at least 2 members"):
        MutualLearningModule([_mlp()])


def test_the_student_step_is_distillation_loss_and_teachers_stay_frozen():
    from peerlearn.lightning import DistillationModule

    torch.manual_seed(1)
    teachers = [nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5)), _mlp(16)]
    module = DistillationModule(_mlp(), teachers, alpha=0.25, temperature=3.0)
    module.log = lambda *args, **kwargs: None
    module.train()
    assert all(not t.training for t in module.teachers)  # dropout off: the targets are deterministic
    assert all(not p.requires_grad for p in module.teachers.parameters())
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    got = module.training_step((x, y), 0)
    q = teacher_probs([t(x) for t in teachers], 3.0)
    torch.testing.assert_close(got, distillation_loss(module.student(x), q, y, 3.0, 0.25))
    optimizer = module.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == \
        {id(p) for p in module.student.parameters()}


def test_a_clear_error_without_lightning(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, "peerlearn.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'peerlearn\[lightning\]'"):
        importlib.import_module("peerlearn.lightning")
    monkeypatch.delitem(sys.modules, "peerlearn.lightning", raising=False)
