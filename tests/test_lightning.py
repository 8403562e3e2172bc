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
    assert float(ns["rkd_trainer"].callback_metrics["val/top1"]) > 0.5  # the extra_loss example learns too
    assert "train/extra" in ns["rkd_trainer"].callback_metrics
    # Lightning's checkpoint reloaded: same weights, same settings
    restored = ns["restored"]
    assert restored.hparams.weight == 1.0 and restored.hparams.temperature == 1.0
    for key, value in ns["cohort"].state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    # the CSV logger recorded both epochs' validation
    logged = sorted((tmp_path / "lightning_runs").rglob("metrics.csv"))
    assert len(logged) == 3 and "val/ensemble/top1" in logged[0].read_text()
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


def test_an_extra_loss_reads_layers_by_hooks_and_adds_to_the_kd_loss():
    """The extension point for the feature / relational losses: RKD on hidden layers read by forward hooks."""
    from peerlearn.lightning import DistillationModule
    from peerlearn.losses import rkd_loss

    torch.manual_seed(2)
    teacher, student = _mlp(16), _mlp(8)
    seen = []

    def extra(outputs):
        seen.append(outputs)
        return rkd_loss(outputs.student_features["1"], outputs.teacher_features["0.1"])

    module = DistillationModule(student, teacher, alpha=0.5, temperature=2.0, extra_loss=extra, extra_weight=0.3,
                                student_layers=["1"], teacher_layers=["0.1"])
    module.log = lambda *args, **kwargs: None
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    got = module.training_step((x, y), 0)
    hidden_s, hidden_t = student[1](student[0](x)), teacher[1](teacher[0](x))
    expected = (distillation_loss(student(x), teacher_probs([teacher(x)], 2.0), y, 2.0, 0.5)
                + 0.3 * rkd_loss(hidden_s, hidden_t))
    torch.testing.assert_close(got, expected)
    outputs = seen[0]
    assert outputs.indices is None and not outputs.teacher_features["0.1"].requires_grad
    assert outputs.student_features["1"].requires_grad
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])  # hooks removed
    got.backward()
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="'7', which is not a submodule"):
        DistillationModule(_mlp(), _mlp(), extra_loss=extra, student_layers=["7"])
    with pytest.raises(ValueError, match="pass extra_loss"):
        DistillationModule(_mlp(), _mlp(), student_layers=["1"])


def test_crd_under_the_trainer_trains_its_heads_and_checkpoints_its_banks(tmp_path):
    """A module as extra_loss (CRD: heads + memory banks) with (x, y, index) batches: its heads are optimised,
    its banks move and are saved in Lightning's checkpoint."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from peerlearn.lightning import DistillationModule
    from peerlearn.losses import CRDLoss

    torch.manual_seed(3)
    torch.set_num_threads(1)
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    crd = CRDLoss(student_dim=8, teacher_dim=16, num_data=64, feature_dim=4, num_negatives=16)
    module = DistillationModule(_mlp(8), _mlp(16), alpha=1.0, extra_loss=_CRDTerm(crd), extra_weight=0.8,
                                student_layers=["1"], teacher_layers=["0.1"])
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in crd.parameters()} <= optimised
    banks_before = crd.student_bank.clone()
    head_before = crd.embed_teacher.linear.weight.detach().clone()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(x, y, torch.arange(64)), batch_size=16, shuffle=True))
    assert not torch.equal(crd.student_bank, banks_before)
    assert not torch.equal(crd.embed_teacher.linear.weight, head_before)  # the critic's teacher head learns
    trainer.save_checkpoint(tmp_path / "crd.ckpt")
    saved = torch.load(tmp_path / "crd.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(saved["extra_loss.crd.student_bank"], crd.student_bank)
    assert saved["extra_loss.crd.teacher_bank"].shape == (64, 4)


class _CRDTerm(nn.Module):
    """The user's glue: CRD on the hooked hidden layers, with the batch's item indices."""

    def __init__(self, crd):
        super().__init__()
        self.crd = crd

    def forward(self, outputs):
        return self.crd(outputs.student_features["1"], outputs.teacher_features["0.1"], outputs.indices)
