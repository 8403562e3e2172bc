"""Build a member's optimizer and learning-rate schedule from its (resolved) config."""

from __future__ import annotations

import math

import torch
from torch import nn

from peerlearn.config import OptimConfig, ScheduleConfig


def build_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov momentum), Adam, AdamW, RMSProp or Adagrad."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                 weight_decay=config.weight_decay)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, alpha=config.alpha, eps=config.eps,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
    if config.name == "adagrad":
        return torch.optim.Adagrad(params, lr=config.lr, eps=config.eps, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}")


class Schedule:
    """An LR schedule with its stepping unit: 'epoch' (step/multistep/cosine) or 'step' (one-cycle), and the
    settings it was built from (``config``, ``steps_per_epoch``), so that it can be built again over other epochs
    (``restarted``)."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler | None, unit: str,
                 config: ScheduleConfig | None = None, steps_per_epoch: int = 1):
        self.scheduler = scheduler
        self.unit = unit
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def restarted(self, optimizer: torch.optim.Optimizer, epochs: int) -> "Schedule":
        """The same schedule built anew over ``epochs`` epochs, from the optimizer groups' current lr (the base)."""
        if self.config is None:
            return self
        return build_schedule(optimizer, self.config, epochs, self.steps_per_epoch)

    def step(self, unit: str) -> None:
        if self.scheduler is not None and unit == self.unit:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def build_schedule(optimizer: torch.optim.Optimizer, config: ScheduleConfig, epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """Step decay (×γ every ``step_size`` epochs), multistep (×γ at ``milestones``), cosine to
    ``min_lr`` over the epochs, or one-cycle (per step, peak ``max_lr``)."""
    lr_sched = torch.optim.lr_scheduler
    if config.name == "constant":
        return Schedule(None, "epoch", config, steps_per_epoch)
    if config.name == "step":
        return Schedule(lr_sched.StepLR(optimizer, config.step_size, config.gamma), "epoch", config, steps_per_epoch)
    if config.name == "multistep":
        return Schedule(lr_sched.MultiStepLR(optimizer, config.milestones, config.gamma), "epoch", config,
                        steps_per_epoch)
    if config.name == "cosine":
        return Schedule(lr_sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=config.min_lr), "epoch",
                        config, steps_per_epoch)
    if config.name == "onecycle":
        max_lr = config.max_lr or optimizer.param_groups[0]["lr"]
        total = max(1, epochs * steps_per_epoch)
        return Schedule(lr_sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                           pct_start=config.warmup_fraction), "step", config, steps_per_epoch)
    raise ValueError(f"unknown schedule {config.name!r}")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr) if not math.isnan(lr) else lr
