"""A cohort: named members, each a model with its own optimizer, schedule and role."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

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
        return [m for m in self if m.trainable]

    @property
    def frozen(self) -> list[Member]:
        return [m for m in self if not m.trainable]

    def train(self) -> None:
        """Trainable members in train mode; frozen members always in eval mode."""
        for member in self:
            member.model.train(member.trainable)

    def eval(self) -> None:
        for member in self:
            member.model.eval()

    def to(self, device: torch.device) -> "Cohort":
        for member in self:
            member.model.to(device)
        return self

    def step_schedules(self, unit: str) -> None:
        for member in self.trainable:
            if member.schedule is not None:
                member.schedule.step(unit)


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
