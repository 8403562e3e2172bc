"""Deep Mutual Learning and distillation as Lightning modules (the optional extra ``peerlearn[lightning]``).

Both modules compute their losses with ``peerlearn.losses``, the functions the peerlearn recipes use, and
leave everything else to Lightning's own ``Trainer``: devices, strategies, precision, checkpoints, loggers,
early stopping. Batches are ``(x, y)`` pairs; labels of −1 mark unlabelled items (left out of CE).

* ``MutualLearningModule(members, ...)``: a DML cohort trained simultaneously. Member k's loss is
  L_k = CE(z_k, y) + λ · mutual_mimicry(z_k, peers), the peers' probabilities detached, so the summed loss
  gives every member exactly the gradient of its own L_k: one backward, one optimizer step.
* ``DistillationModule(student, teachers, ...)``: a student under frozen teachers (eval mode, no gradient):
  α · CE(z, y) + (1 − α) · T² · KL(q_T ‖ softmax(z / T)), q the teachers' mean probability at T; or logit
  matching with ``soft_loss="logit_mse"``. ``extra_loss`` adds one of the feature, relational or logit-relation
  losses of ``peerlearn.losses`` (FitNets, AT, SP, RKD, PKT, CRD, DKD, DIST), reading intermediate layers by
  forward hooks (``student_layers``, ``teacher_layers``); a module (connectors, CRD's heads and banks) is
  trained with the student and saved in the checkpoint.

Validation logs top-1 accuracy as a fraction (``val/<member>/top1``, ``val/ensemble/top1``; ``val/top1`` for
the student). Checkpoints hold the modules' weights and the numeric settings; reload with
``MutualLearningModule.load_from_checkpoint(path, members=...)`` (the networks themselves are passed again,
as for any LightningModule built from modules). See docs/lightning.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from peerlearn.losses import cross_entropy, distillation_terms, mutual_learning_losses, soft_targets
from peerlearn.losses.checks import check_choice, check_interval, check_nonnegative, check_positive
from peerlearn.losses.distillation import SOFT_LOSSES
from peerlearn.losses.mimicry import DIVERGENCES, TEACHERS

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name ships the same API
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("peerlearn.lightning needs Lightning, which is not installed: "
                          "pip install 'peerlearn[lightning]' (or pip install lightning).") from None

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def default_optimizer(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam with learning rate 10⁻³; pass ``optimizer=`` (a function of the parameters) for another."""
    return torch.optim.Adam(parameters, lr=1e-3)


def _named_members(members: Union[Mapping[str, nn.Module], Sequence[nn.Module]]) -> nn.ModuleDict:
    named = dict(members) if isinstance(members, Mapping) else {f"member{k}": m for k, m in enumerate(members)}
    if len(named) < 2:
        raise ValueError(f"a mutual-learning cohort needs at least 2 members, got {len(named)}")
    return nn.ModuleDict(named)


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of labelled items whose highest logit is the label."""
    labelled = labels >= 0
    return (logits[labelled].argmax(-1) == labels[labelled]).float().mean()


class MutualLearningModule(pl.LightningModule):
    """A DML cohort (Zhang et al. 2018) under Lightning: ``members`` (a dict name → module, or a list) each
    map x to logits [N, C]. ``weight`` λ, ``temperature`` T, ``divergence`` ("kl"/"js"), ``teacher``
    ("peers"/"ensemble" for DML_e) and ``mimic_on_labelled_only`` are those of
    ``peerlearn.losses.mutual_learning_losses``. ``optimizer`` builds one optimizer over all members'
    parameters (per-parameter optimizers such as SGD and Adam then act on each member independently)."""

    def __init__(self, members: Union[Mapping[str, nn.Module], Sequence[nn.Module]], weight: float = 1.0,
                 temperature: float = 1.0, divergence: str = "kl", teacher: str = "peers",
                 mimic_on_labelled_only: bool = False, optimizer: Optional[OptimizerFactory] = None):
        check_nonnegative(weight, "weight")  # checked here, not at the first training step
        check_positive(temperature, "temperature")
        check_choice(divergence, "divergence", DIVERGENCES)
        check_choice(teacher, "teacher", TEACHERS)
        super().__init__()
        self.save_hyperparameters(ignore=["members", "optimizer"])
        self.members = _named_members(members)
        self.optimizer_factory = optimizer or default_optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: [K, N, C]."""
        return torch.stack([member(x) for member in self.members.values()])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        h = self.hparams
        losses = mutual_learning_losses([member(x) for member in self.members.values()], y, h.weight,
                                        h.temperature, h.divergence, h.teacher, h.mimic_on_labelled_only)
        for name, loss in zip(self.members, losses):
            self.log(f"train/{name}/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        total = torch.stack(losses).sum()
        self.log("train/loss", total / len(losses), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return total

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        for name, z in zip(self.members, logits):
            self.log(f"val/{name}/top1", _top1(z, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        ensemble = torch.softmax(logits, -1).mean(0)
        self.log("val/ensemble/top1", _top1(ensemble, y), on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.members.parameters())


class DistillationOutputs(NamedTuple):
    """What ``DistillationModule``'s ``extra_loss`` receives for a training batch.

    ``student_features[path]`` is the output of the student's submodule ``path`` (with gradient);
    ``teacher_features[path]`` of the teachers' submodule ``path``, a path inside the teachers' list ("0.layer3"
    is ``layer3`` of the first teacher; computed without gradient). ``indices`` are the items' positions in the
    training set when batches are ``(x, y, index)`` triples (CRD needs them), else None."""

    student_logits: torch.Tensor
    teacher_logits: list[torch.Tensor]
    labels: torch.Tensor
    student_features: dict[str, torch.Tensor]
    teacher_features: dict[str, torch.Tensor]
    indices: Optional[torch.Tensor]


def _submodules(root: nn.Module, paths: Sequence[str], what: str) -> dict[str, nn.Module]:
    modules = dict(root.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        shown = [n for n in modules if n][:12]
        raise ValueError(f"{what} names {missing[0]!r}, which is not a submodule; submodules include: "
                         f"{', '.join(shown) or 'none'}")
    return {p: modules[p] for p in paths}


@contextmanager
def _capture(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's output during the block (forward hooks, removed afterwards: nothing is left on the
    user's networks between steps)."""
    seen: dict[str, torch.Tensor] = {}

    def hook_for(path):
        def hook(module, args, output):
            seen[path] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    handles = [module.register_forward_hook(hook_for(path)) for path, module in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class DistillationModule(pl.LightningModule):
    """Knowledge distillation (Hinton et al. 2015) under Lightning: ``student`` learns from frozen
    ``teachers`` (one module or several; several are averaged in probability at T). ``alpha`` α,
    ``temperature`` T and ``soft_loss`` ("kl" or "logit_mse") are those of
    ``peerlearn.losses.distillation_loss``; with α = 0 no label is used. Only the student is optimised.

    ``extra_loss``, optional, is added with weight ``extra_weight``: loss = α · CE + (1 − α) · soft +
    extra_weight · extra_loss(outputs), ``outputs`` a ``DistillationOutputs`` holding the logits and the
    outputs of the submodules named in ``student_layers`` / ``teacher_layers``. When ``extra_loss`` is an
    ``nn.Module`` (a connector such as ``HintRegressor`` inside it, or ``CRDLoss``) its parameters are optimised
    with the student's and its buffers (CRD's memory banks) are saved in the checkpoint. α = 1 leaves the
    cross-entropy and the extra term alone (the KD term's weight is then 0)."""

    def __init__(self, student: nn.Module, teachers: Union[nn.Module, Sequence[nn.Module]], alpha: float = 0.5,
                 temperature: float = 4.0, soft_loss: str = "kl", optimizer: Optional[OptimizerFactory] = None,
                 extra_loss: Optional[Callable[[DistillationOutputs], torch.Tensor]] = None, extra_weight: float = 1.0,
                 student_layers: Sequence[str] = (), teacher_layers: Sequence[str] = ()):
        check_interval(alpha, "alpha", 0.0, 1.0)  # checked here, not at the first training step
        check_positive(temperature, "temperature")
        check_choice(soft_loss, "soft_loss", SOFT_LOSSES)
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teachers", "optimizer", "extra_loss"])
        self.student = student
        self.teachers = nn.ModuleList([teachers] if isinstance(teachers, nn.Module) else list(teachers))
        if len(self.teachers) == 0:
            raise ValueError("DistillationModule needs at least one teacher")
        self.teachers.requires_grad_(False)
        self.teachers.eval()
        self.optimizer_factory = optimizer or default_optimizer
        if (student_layers or teacher_layers) and extra_loss is None:
            raise ValueError("student_layers and teacher_layers are read for extra_loss; pass extra_loss too")
        self.extra_loss = extra_loss
        self._student_taps = _submodules(self.student, list(student_layers), "student_layers")
        self._teacher_taps = _submodules(self.teachers, list(teacher_layers), "teacher_layers")

    def train(self, mode: bool = True) -> "DistillationModule":
        """Teachers stay in eval mode (BatchNorm statistics, dropout) whatever Lightning switches."""
        super().train(mode)
        self.teachers.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits [N, C]."""
        return self.student(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        h = self.hparams
        with torch.no_grad(), _capture(self._teacher_taps) as teacher_features:
            teacher_logits = [teacher(x) for teacher in self.teachers]
        with _capture(self._student_taps) as student_features:
            student_logits = self.student(x)
        targets = soft_targets(teacher_logits, h.temperature, h.soft_loss)
        terms = distillation_terms(student_logits, targets, y, h.temperature, h.alpha, h.soft_loss)
        loss = terms.loss
        self.log("train/soft", terms.soft, on_step=False, on_epoch=True, batch_size=len(y))
        if terms.hard is not None:
            self.log("train/ce", terms.hard, on_step=False, on_epoch=True, batch_size=len(y))
        if self.extra_loss is not None:
            outputs = DistillationOutputs(student_logits, teacher_logits, y, dict(student_features),
                                          dict(teacher_features), batch[2] if len(batch) > 2 else None)
            extra = self.extra_loss(outputs)
            self.log("train/extra", extra, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + h.extra_weight * extra
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        self.log("val/ce", cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log("val/top1", _top1(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = list(self.student.parameters())
        if isinstance(self.extra_loss, nn.Module):  # connectors, CRD's heads: trained with the student
            parameters += list(self.extra_loss.parameters())
        return self.optimizer_factory(parameters)
