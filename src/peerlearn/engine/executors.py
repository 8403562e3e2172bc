"""Execution modes of a peer-learning step, shared by every recipe whose members learn from each other.

A recipe supplies the maths (a ``PeerObjective``); an executor decides how the cohort computes it:

* ``SimultaneousLoop``: every member predicts once, then every member steps on its loss
  L_k(z_k, {t_l}_{l≠k}) with the peers' targets t_l taken from the same forward.
* ``SequentialLoop`` (DML Algorithm 1): member 1 steps, its targets are recomputed with its new weights
  (no grad, BatchNorm statistics untouched), member 2 steps, ...
* ``FusedExecutor``: the simultaneous update with one ``vmap``-ed forward of all members
  (``engine.fused``: logits [K, B, C]); the recipe gives the losses of the stacked outputs.
* ``DistributedExecutor``: the simultaneous update with one member per process; the peers' targets
  come by all-gather, and a member's replicas average their gradients (``engine.distributed``).

All four give the same weights within float tolerance (tests/test_fused.py, tests/test_distributed.py).
``select_executor`` picks one from the recipe's declared capabilities and the config.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch

from peerlearn.engine.cohort import Member, preserved_batchnorm_stats
from peerlearn.engine.distributed import all_gather_rows, average_gradients
from peerlearn.engine.fused import FusedCohort
from peerlearn.engine.trainer import check_finite

Outputs = tuple[torch.Tensor, Optional[torch.Tensor]]
LossParts = tuple[torch.Tensor, dict[str, torch.Tensor]]


class PeerObjective(Protocol):
    """What an executor needs from a recipe: its cohort, forwards, update and the per-member loss."""

    cohort: Any
    distributed: Any
    trainer: Any

    def needs_features(self) -> bool: ...

    def forward(self, member: Member, x: torch.Tensor, with_features: bool = False) -> Outputs: ...

    def autocast(self): ...

    def update(self, members: list[Member], losses: list[torch.Tensor]) -> torch.Tensor: ...

    def share(self, logits: torch.Tensor,
              features: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The detached targets one member gives its peers: (probabilities or None, features or None)."""

    def member_loss(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor],
                    probs: dict[str, torch.Tensor], feats: dict[str, torch.Tensor], batch) -> LossParts: ...

    def stacked_losses(self, logits: torch.Tensor, features: Optional[torch.Tensor], batch) -> list[LossParts]:
        """Every member's (loss, parts) from the stacked outputs [K, B, ...] of a fused forward."""


def _member_log(name: str, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}/{key}": value for key, value in parts.items()}


class Executor:
    """One training step of a peer cohort: ``executor.step(recipe, batch) -> log``."""

    name = "base"

    def step(self, recipe: PeerObjective, batch) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _outputs(recipe: PeerObjective, members: list[Member], x: torch.Tensor) -> dict[str, Outputs]:
        with_features = recipe.needs_features()
        return {m.name: recipe.forward(m, x, with_features) for m in members}

    @staticmethod
    def _targets(recipe: PeerObjective, outputs: dict[str, Outputs]):
        probs: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        for name, (logits, features) in outputs.items():
            p, f = recipe.share(logits, features)
            if p is not None:
                probs[name] = p
            if f is not None:
                feats[name] = f
        return probs, feats


class SimultaneousLoop(Executor):
    """All members predict once, every member steps: one forward and one backward per member."""

    name = "loop"

    def step(self, recipe: PeerObjective, batch) -> dict[str, Any]:
        members = recipe.cohort.trainable
        outputs = self._outputs(recipe, members, batch.x)
        probs, feats = self._targets(recipe, outputs)
        losses, log = [], {}
        for member in members:
            logits, features = outputs[member.name]
            loss, parts = recipe.member_loss(member.name, logits, features, probs, feats, batch)
            losses.append(loss)
            log.update(_member_log(member.name, parts))
        log["loss"] = recipe.update(members, losses)
        return log


class SequentialLoop(Executor):
    """Members step one after another; each later member sees the earlier ones' updated targets.

    Only the member just updated is recomputed (without grad); the others' graphs are still valid
    because their weights have not changed since their forward.
    """

    name = "sequential"

    def step(self, recipe: PeerObjective, batch) -> dict[str, Any]:
        members = recipe.cohort.trainable
        outputs = self._outputs(recipe, members, batch.x)
        probs, feats = self._targets(recipe, outputs)
        total = 0.0
        log: dict[str, Any] = {}
        for index, member in enumerate(members):
            logits, features = outputs[member.name]
            loss, parts = recipe.member_loss(member.name, logits, features, probs, feats, batch)
            total = total + recipe.update([member], [loss])
            log.update(_member_log(member.name, parts))
            if index < len(members) - 1 and (probs or feats):
                with torch.no_grad(), preserved_batchnorm_stats(member.model):
                    refreshed = recipe.forward(member, batch.x, recipe.needs_features())
                p, f = recipe.share(*refreshed)
                if p is not None:
                    probs[member.name] = p
                if f is not None:
                    feats[member.name] = f
        log["loss"] = total / len(members)
        return log


class FusedExecutor(Executor):
    """The simultaneous update with one batched (``vmap``) forward of members of one architecture."""

    name = "fused"

    def __init__(self, recipe: PeerObjective):
        members = recipe.cohort.trainable
        self.fused = FusedCohort([m.model for m in members], [m.name for m in members],
                                 with_features=recipe.needs_features())

    def step(self, recipe: PeerObjective, batch) -> dict[str, Any]:
        members = recipe.cohort.trainable
        with recipe.autocast():
            logits, features = self.fused(batch.x)
        logits = logits.float()
        features = features.float() if features is not None else None
        losses, log = [], {}
        for member, (loss, parts) in zip(members, recipe.stacked_losses(logits, features, batch)):
            losses.append(loss)
            log.update(_member_log(member.name, parts))
        log["loss"] = recipe.update(members, losses)
        return log


class DistributedExecutor(Executor):
    """The simultaneous update with this process's member only; peers' targets by all-gather.

    With several processes per member, each takes its slice of the batch and gradients are averaged
    over the member's processes (g ← 1/R Σ_r g_r).
    """

    name = "distributed"

    def step(self, recipe: PeerObjective, batch) -> dict[str, Any]:
        ctx = recipe.distributed
        member = recipe.cohort[ctx.member_name]
        batch = ctx.shard(batch)
        logits, features = recipe.forward(member, batch.x, recipe.needs_features())
        probs: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        if ctx.num_members > 1:
            p, f = recipe.share(logits, features)
            if p is not None:
                probs = dict(zip(ctx.members, all_gather_rows(ctx, p)))
            if f is not None:
                feats = dict(zip(ctx.members, all_gather_rows(ctx, f)))
        loss, parts = recipe.member_loss(member.name, logits, features, probs, feats, batch)
        check_finite(loss, member.name, recipe.trainer)
        member.zero_grad()
        loss.backward()
        average_gradients(ctx, member.model)
        member.step()
        ctx.sync_buffers(member.model)
        keys = sorted(parts)
        values = all_gather_rows(ctx, torch.stack([loss.detach()] + [parts[k].float() for k in keys]))
        log: dict[str, Any] = {}
        for name, row in zip(ctx.members, values):
            log.update({f"{name}/{k}": row[1 + i] for i, k in enumerate(keys)})
        log["loss"] = torch.stack(values)[:, 0].mean()
        return log


def select_executor(recipe: PeerObjective, fused: bool, update: str = "simultaneous") -> Executor:
    """The executor of a cohort: distributed when the process belongs to a distributed run, fused when
    ``engine.fused`` is on, else the loop of the recipe's update order. The recipe's capabilities
    (``supports_distributed``, ``supports_fused``) are checked before training (``Recipe.validate``)."""
    if recipe.distributed is not None:
        return DistributedExecutor()
    if fused:
        return FusedExecutor(recipe)
    return SequentialLoop() if update == "sequential" else SimultaneousLoop()
