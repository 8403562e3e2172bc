"""The step contract: how every recipe's training step runs.

A recipe declares *what* a step computes; an executor decides *how*:

* the recipe names the networks that run forward on the batch this stage (``step_members``), how a network
  runs forward in training (``Recipe.network_forward``: its logits, and its penultimate features when a loss
  reads them), and gives its losses **once**, as ``losses(out, batch, names) -> {name: (loss, parts)}`` over
  the step's outputs ``out`` (a ``StepOutputs``: every forwarded network's logits and features, peers'
  detached probabilities on request). Frozen teachers, auxiliary modules (gates, connectors, heads) and
  shared-trunk branches are read or called inside ``losses``; their gradients flow with the members'.
* the executor owns the forward passes (autocast, channels-last and compile are applied to the members by
  ``engine.acceleration``; ``Recipe.forward`` wraps the recipe's forward in autocast), the finiteness
  guard, the backward pass and every optimizer step (members and auxiliary modules, ``Recipe.update``).

Executors:

* ``SimultaneousLoop``: every member predicts once, then every participant steps on its loss, with the
  peers' targets from the same forward.
* ``SequentialLoop`` (DML Algorithm 1): member 1 steps, its outputs are recomputed with its new weights
  (no grad, BatchNorm statistics untouched), member 2 steps, ...
* ``FusedExecutor``: the simultaneous update with one batched forward of members of one architecture: a
  packed network with layers grouped by member (``engine.packed``) when the architecture allows, else a
  ``vmap``-ed one (``engine.fused``); the stacked logits [K, B, C] are handed to the same ``losses`` member by
  member.
* ``DistributedExecutor``: the simultaneous update with one member per process; the peers' outputs come by
  all-gather (detached), and a member's replicas average their gradients (``engine.distributed``).

All give the same weights within float tolerance (tests/test_fused.py, tests/test_distributed.py).
``select_executor`` picks one from the recipe's declared capabilities and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch

from peerlearn.engine.cohort import Member, preserved_batchnorm_stats
from peerlearn.engine.distributed import all_gather_rows, average_gradients
from peerlearn.engine.epoch_log import ensure_handler, logger
from peerlearn.engine.fused import FusedCohort
from peerlearn.engine.packed import NotPackable, PackedCohort
from peerlearn.engine.trainer import check_finite

Outputs = tuple[torch.Tensor, Optional[torch.Tensor]]
LossParts = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class StepOutputs:
    """What one step's forward passes produced, by participant name.

    ``logits[name]`` (fp32; carries the graph for a member that trains this step, detached for a peer whose
    outputs came from elsewhere) and ``features[name]`` (penultimate features or None). ``probs(name, T)`` is
    a peer's target softmax(z / T), detached and computed once per step (``losses`` of several members reuse it).
    """

    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, Optional[torch.Tensor]] = field(default_factory=dict)
    _targets: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict, repr=False)

    def set(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor] = None) -> None:
        """Record (or replace, after an update) ``name``'s outputs; its cached targets are dropped."""
        self.logits[name], self.features[name] = logits, features
        for key in [k for k in self._targets if k[0] == name]:
            del self._targets[key]

    def probs(self, name: str, temperature: float = 1.0) -> torch.Tensor:
        """softmax(z_name / T), detached: a peer's target, never a path for gradient."""
        key = (name, float(temperature))
        if key not in self._targets:
            from peerlearn.losses import soft_probs

            self._targets[key] = soft_probs(self.logits[name], temperature)
        return self._targets[key]

    def peers(self, name: str) -> list[str]:
        """The other participants whose logits this step holds, in order."""
        return [other for other in self.logits if other != name]

    def peer_features(self, name: str) -> list[torch.Tensor]:
        """The other participants' features (those this step holds), in order."""
        return [f for other, f in self.features.items() if other != name and f is not None]


class StepRecipe(Protocol):
    """What an executor needs from a recipe (``recipes.base.Recipe`` implements it)."""

    cohort: Any
    distributed: Any
    trainer: Any

    def step_members(self) -> list[Member]: ...

    def forward(self, member: Member, x: torch.Tensor) -> Outputs: ...

    def member_input(self, member: Member, batch) -> torch.Tensor:
        """The inputs ``member`` sees this step (``batch.x``; a recipe may give each member its own view)."""

    def shared_outputs(self) -> tuple[bool, bool]:
        """(logits, features): what a member's peers read from it (exchanged between processes, refreshed
        after a sequential update)."""

    def losses(self, out: StepOutputs, batch, names: list[str]) -> dict[str, LossParts]: ...

    def update(self, members: list[Member], losses: list[torch.Tensor],
               with_auxiliaries: bool = True) -> torch.Tensor: ...


def _member_log(name: str, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}/{key}": value for key, value in parts.items()}


class Executor:
    """One training step of a recipe: ``executor.step(recipe, batch) -> log``."""

    name = "base"

    def step(self, recipe: StepRecipe, batch) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def forward_all(recipe: StepRecipe, members: list[Member], batch) -> StepOutputs:
        out = StepOutputs()
        for member in members:
            out.set(member.name, *recipe.forward(member, recipe.member_input(member, batch)))
        return out


class SimultaneousLoop(Executor):
    """All members predict once, every participant steps: one forward and one backward per member."""

    name = "loop"

    def step(self, recipe: StepRecipe, batch) -> dict[str, Any]:
        members = recipe.step_members()
        out = self.forward_all(recipe, members, batch)
        named = recipe.losses(out, batch, [m.name for m in members])
        log: dict[str, Any] = {}
        for name, (_, parts) in named.items():
            log.update(_member_log(name, parts))
        owners = [recipe.cohort[name] for name in named]
        log["loss"] = recipe.update(owners, [loss for loss, _ in named.values()])
        return log


class SequentialLoop(Executor):
    """Members step one after another; each later member sees the earlier ones' updated outputs.

    Only the member just updated is recomputed (without grad); the others' graphs are still valid because
    their weights have not changed since their forward. Auxiliary modules step with the last member.
    """

    name = "sequential"

    def step(self, recipe: StepRecipe, batch) -> dict[str, Any]:
        members = recipe.step_members()
        out = self.forward_all(recipe, members, batch)
        refresh = any(recipe.shared_outputs())
        total = 0.0
        log: dict[str, Any] = {}
        for index, member in enumerate(members):
            last = index == len(members) - 1
            named = recipe.losses(out, batch, [member.name])
            for name, (_, parts) in named.items():
                log.update(_member_log(name, parts))
            total = total + recipe.update([recipe.cohort[n] for n in named], [loss for loss, _ in named.values()],
                                          with_auxiliaries=last)
            if not last and refresh:
                with torch.no_grad(), preserved_batchnorm_stats(member.model):
                    logits, features = recipe.forward(member, recipe.member_input(member, batch))
                out.set(member.name, logits, features)
        log["loss"] = total / len(members)
        return log


class FusedExecutor(Executor):
    """The simultaneous update with one batched forward of members of one architecture.

    Two ways to batch them, chosen once when the executor is made (``mode="auto"``) and logged on the
    ``peerlearn`` logger: *packed* (``engine.packed``: one network whose layers are grouped by member) when
    the architecture can be packed, else *vmap* (``engine.fused``: the architecture mapped over the
    stacked parameters). ``mode="packed"`` / ``"vmap"`` forces one (benchmarks, tests)."""

    name = "fused"

    def __init__(self, recipe: StepRecipe, mode: str = "auto"):
        members = recipe.step_members()
        models, names = [m.model for m in members], [m.name for m in members]
        with_features = recipe.needs_features()
        self.fused, self.mode, self.reason = None, "vmap", ""
        if mode in ("auto", "packed"):
            try:
                self.fused, self.mode = PackedCohort(models, names, with_features), "packed"
            except NotPackable as error:
                if mode == "packed":
                    raise
                self.reason = str(error)
        if self.fused is None:
            self.fused = FusedCohort(models, names, with_features=with_features)
        ensure_handler()
        if self.mode == "packed":
            logger.info("engine.fused: %d members packed into one network with grouped layers", len(models))
        else:
            logger.info("engine.fused: %d members batched with vmap (not packed: %s)", len(models),
                        self.reason or "asked for vmap")

    def step(self, recipe: StepRecipe, batch) -> dict[str, Any]:
        members = recipe.step_members()
        with recipe.autocast():
            logits, features = self.fused(batch.x)
        out = StepOutputs()
        for k, member in enumerate(members):
            out.set(member.name, logits[k].float(), None if features is None else features[k].float())
        named = recipe.losses(out, batch, [m.name for m in members])
        log: dict[str, Any] = {}
        for name, (_, parts) in named.items():
            log.update(_member_log(name, parts))
        log["loss"] = recipe.update([recipe.cohort[n] for n in named], [loss for loss, _ in named.values()])
        return log


class DistributedExecutor(Executor):
    """The simultaneous update with this process's member only; peers' outputs by all-gather.

    With several processes per member, each takes its slice of the batch and gradients are averaged
    over the member's processes (g ← 1/R Σ_r g_r).
    """

    name = "distributed"

    def step(self, recipe: StepRecipe, batch) -> dict[str, Any]:
        ctx = recipe.distributed
        member = recipe.cohort[ctx.member_name]
        batch = ctx.shard(batch)
        logits, features = recipe.forward(member, batch.x)
        out = StepOutputs()
        out.set(member.name, logits, features)
        share_logits, share_features = recipe.shared_outputs() if ctx.num_members > 1 else (False, False)
        peer_logits = all_gather_rows(ctx, logits.detach()) if share_logits else None
        peer_features = all_gather_rows(ctx, features.detach()) if share_features and features is not None else None
        for index, name in enumerate(ctx.members):
            if name == member.name:
                continue
            if peer_logits is not None:
                out.logits[name] = peer_logits[index]
            if peer_features is not None:
                out.features[name] = peer_features[index]
        named = recipe.losses(out, batch, [member.name])
        loss, parts = named[member.name]
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


def select_executor(recipe: StepRecipe, fused: bool, update: str = "simultaneous") -> Executor:
    """The executor of a recipe: distributed when the process belongs to a distributed run, fused when
    ``engine.fused`` is on, else the loop of the update order. The recipe's capabilities
    (``supports_distributed``, ``supports_fused``) are checked before training (``Recipe.validate``)."""
    if recipe.distributed is not None:
        return DistributedExecutor()
    if fused:
        return FusedExecutor(recipe)
    return SequentialLoop() if update == "sequential" else SimultaneousLoop()
