"""A cohort: named participants of a run, each a module with its own optimizer, schedule and role.

Three kinds of participant share one record (``Member.kind``):

* ``network``: a member network (a student, a teacher, a transfer model): its weights are saved, it is
  evaluated and ensembled;
* ``auxiliary``: a trainable part that is not a member network (a gate, a hint regressor, a projection
  head, an EMA copy, a memory bank): saved, checkpointed and stepped like a member; when it yields logits
  for an input (``predictor``, e.g. a gated ensemble of branches) it is evaluated as its own row;
* ``view``: a member that is a view of another participant's weights (one branch of a shared-trunk network,
  trunk + branch k): evaluated, ensembled and exported, never saved or stepped on its own (its owner is).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from peerlearn.engine.constraints import apply_max_norm
from peerlearn.engine.optim import Schedule


@dataclass
class Member:
    """One network of the cohort. A frozen member (a teacher) has no optimizer and stays in eval mode."""

    name: str
    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer] = None
    schedule: Optional[Schedule] = None
    trainable: bool = True
    info: dict = field(default_factory=dict)  # e.g. the model name and args, for export and reports
    max_norm: Optional[float] = None  # max-norm weight constraint applied after every optimizer step
    kind: str = "network"  # network | auxiliary | view (see the module docstring)
    predictor: Optional[nn.Module] = None  # inputs -> logits for evaluation/export (default: ``model``)
    view_of: Optional[str] = None  # a view's owner (the participant whose weights it reads)

    def __post_init__(self) -> None:
        if self.predictor is None and self.kind != "auxiliary":
            self.predictor = self.model

    @property
    def network(self) -> nn.Module:
        """The member's own network: the user's module itself when peerlearn wraps it (``HookedModel``)."""
        return unwrap(self.model)

    @property
    def saved(self) -> bool:
        """Whether the weights are this participant's own (checkpointed, in model.safetensors)."""
        return self.kind != "view"

    @property
    def evaluable(self) -> bool:
        """Whether it maps inputs to logits (scored by evaluation, exportable)."""
        return self.predictor is not None

    @property
    def updating(self) -> bool:
        """Whether an optimizer steps it this stage."""
        return self.trainable and self.optimizer is not None

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            if self.max_norm is not None:
                apply_max_norm(self.model, self.max_norm)
            if self.schedule is not None:
                self.schedule.step("step")


class Cohort:
    """An ordered set of members. Trainable members learn; frozen ones only predict."""

    def __init__(self, members: list[Member]):
        self.members: dict[str, Member] = {m.name: m for m in members}

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    @property
    def trainable(self) -> list[Member]:
        """The member networks that train now (views and auxiliaries excluded)."""
        return [m for m in self if m.trainable and m.kind == "network"]

    @property
    def frozen(self) -> list[Member]:
        return [m for m in self if not m.trainable and m.kind == "network"]

    @property
    def auxiliaries(self) -> list[Member]:
        return [m for m in self if m.kind == "auxiliary"]

    @property
    def updating(self) -> list[Member]:
        """Every participant an optimizer steps now: trainable networks and trainable auxiliaries."""
        return [m for m in self if m.updating]

    @property
    def evaluable(self) -> list[str]:
        """Names of the participants that map inputs to logits (networks, views, auxiliaries with a predictor)."""
        return [m.name for m in self if m.evaluable]

    @property
    def saved(self) -> list[Member]:
        """Participants whose weights are their own (views read their owner's)."""
        return [m for m in self if m.saved]

    def train(self) -> None:
        """Trainable participants in train mode; frozen ones always in eval mode. A view's modules belong to
        its owner, which sets their mode."""
        for member in self:
            if member.kind != "view":
                member.model.train(member.trainable)

    def eval(self) -> None:
        for member in self:
            if member.kind != "view":
                member.model.eval()

    def to(self, device: torch.device) -> "Cohort":
        for member in self:
            member.model.to(device)
        return self

    def step_schedules(self, unit: str, names: Optional[Iterable[str]] = None) -> None:
        """Step the ``unit`` ('epoch') schedules of the updating participants (only ``names`` when given: a
        distributed process steps the schedule of the member it trains; the others come from their owners)."""
        chosen = None if names is None else set(names)
        for member in self.updating:
            if member.schedule is not None and (chosen is None or member.name in chosen):
                member.schedule.step(unit)


def unwrap(model: nn.Module) -> nn.Module:
    """A user's module inside peerlearn's feature-reading wrapper, else the model itself."""
    return model.network if getattr(model, "wraps_network", False) else model


@contextmanager
def preserved_batchnorm_stats(model: nn.Module):
    """Run a train-mode forward without changing BatchNorm running statistics.

    Sequential DML refreshes a member's predictions after its update; that extra forward must use
    batch statistics like a training forward, but must not count the batch twice in the running
    averages that evaluation uses.
    """
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]
    try:
        yield
    finally:
        for module, mean, var, count in saved:
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(count)
