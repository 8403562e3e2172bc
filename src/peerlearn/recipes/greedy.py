"""Greedy layerwise learning (Belilovsky, Eickenberg, Oyallon 2019), and its end-to-end baseline.

Stage j (j = 0..J−1) solves one shallow supervised problem:

    min over (W_j, C_j) of  CE(C_j(ρ(W_j P_j x_j)), y),    x_j = blocks_{<j}(x) fixed,

i.e. only block j and its auxiliary head learn; blocks < j are frozen, in eval mode (their BatchNorm
statistics fixed) and run without gradients. Each stage has its own epochs, optimizer and schedule.
When the training data is not augmented, x_j never changes during stage j, so it is computed once at
the stage's start and cached (if it fits ``greedy.cache_max_mb``): stage j then costs about one
single-block training, whatever its depth.

``greedy.mode: end_to_end`` trains the same network in one stage, every block and the last head
together, as the baseline. The final classifier is the blocks plus the last auxiliary head; the
heads' ensemble Z = Σ_j 2^j z_j / Σ_j 2^j is scored in the summary.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional

import torch
from pydantic import Field, ValidationError, model_validator

from peerlearn.config import OptimConfig, ScheduleConfig, Section, check_partial_section
from peerlearn.data.batches import Batch, BatchStream
from peerlearn.data.bundle import Split
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.evaluation import score
from peerlearn.engine.optim import build_optimizer, build_schedule
from peerlearn.engine.trainer import Callback, Stage
from peerlearn.errors import ConfigError
from peerlearn.models.layerwise import LayerwiseCNN, weighted_ensemble
from peerlearn.recipes.base import Recipe

MIB = 2 ** 20


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class GreedyStageConfig(Section):
    """Settings of one greedy stage; unset keys fall back to the ``greedy`` defaults."""

    epochs: Optional[int] = Field(None, gt=0, description="epochs of this stage")
    optim: Optional[dict[str, Any]] = Field(None, description="overrides of the optimizer for this stage")
    schedule: Optional[dict[str, Any]] = Field(None, description="overrides of the schedule for this stage")


class GreedyConfig(Section):
    """Greedy layerwise learning: stage j trains block j and its auxiliary head, blocks < j frozen.

    Stage j's optimizer = top-level ``optim`` ← member ``optim`` ← ``greedy.optim`` ← ``greedy.stages.j.optim``
    (later wins); the same for ``schedule``; epochs = ``greedy.stages.j.epochs`` or ``greedy.epochs``
    or ``train.epochs``.
    """

    mode: Literal["greedy", "end_to_end"] = Field(
        "greedy", description="greedy stages, or the same network trained end to end (last head as classifier)")
    epochs: Optional[int] = Field(None, gt=0, description="epochs per stage (default: train.epochs)")
    optim: Optional[dict[str, Any]] = Field(None, description="optimizer overrides for every stage")
    schedule: Optional[dict[str, Any]] = Field(None, description="schedule overrides for every stage (restarts each stage)")
    stages: dict[int, GreedyStageConfig] = Field(
        default_factory=dict, description="per-stage overrides keyed by block index 0..J−1 (end_to_end: key 0)")
    cache: Literal["auto", "on", "off"] = Field(
        "auto", description="cache the frozen prefix's outputs once per stage (auto/on: when not augmented and "
                            "under cache_max_mb, else computed every step)")
    cache_max_mb: float = Field(1024.0, gt=0, description="largest prefix cache allowed, in MiB")

    @model_validator(mode="after")
    def _partials_valid(self) -> "GreedyConfig":
        parts = [("greedy", self.optim, self.schedule)]
        parts += [(f"greedy.stages.{j}", s.optim, s.schedule) for j, s in self.stages.items()]
        for where, optim, schedule in parts:
            for key, section, partial in (("optim", OptimConfig, optim), ("schedule", ScheduleConfig, schedule)):
                if partial is None:
                    continue
                check_partial_section(f"{where}.{key}", section, partial)
        return self


class GreedyRecipe(Recipe):
    name = "greedy"
    section = "greedy"
    section_model = GreedyConfig
    commands = Recipe.commands + ("probe",)  # the separability probe reads a network of blocks

    @classmethod
    def defaults(cls, config) -> dict[str, Any]:
        """A config without members: one layerwise_cnn with its defaults (3 blocks of width 32, k = 1)."""
        return {"members": [{"model": "layerwise_cnn"}]}

    @classmethod
    def validate(cls, config, data) -> None:
        """One member (a layerwise_cnn; its model and stages are checked when it is built)."""
        super().validate(config, data)
        if len(config.members) != 1:
            raise ConfigError(f"Invalid config: key 'members' lists {len(config.members)} members; the greedy recipe "
                              "trains exactly one (a layerwise_cnn).")

    def __init__(self, config, data, device, distributed=None, user_members=None):
        super().__init__(config, data, device, distributed, user_members)
        self.settings = config.greedy
        if self.settings.cache == "on" and self.train_stream.augment is not None and self.train_stream.augment.active:
            raise ConfigError("Invalid config: key 'greedy.cache' has the value 'on', but data.augment is active: the "
                              "prefix outputs change with every augmented batch. Use cache: auto or off.")
        self.active_block = 0
        self.cache_report: dict[str, dict[str, Any]] = {}
        self.stage_seconds: dict[str, float] = {}  # wall time of each stage: caching, training, evaluation
        self._cached_stage = False
        self._clock: Optional[tuple[str, float]] = None

    # ------------------------------------------------------------------ members and settings
    @property
    def member(self) -> Member:
        return next(iter(self.cohort))

    @property
    def model(self) -> LayerwiseCNN:
        return self.member.model

    def build_cohort(self) -> Cohort:
        member_config = self.config.members[0]
        if not member_config.trainable:
            raise ConfigError("Invalid config: key 'members.0.trainable' is false; the greedy recipe trains its member.")
        model = self.build_model(member_config, 0)
        if not isinstance(model, LayerwiseCNN):
            raise ConfigError(f"Invalid config: key 'members.0.model' has the value {member_config.model!r}; the greedy "
                              "recipe needs a network of blocks with auxiliary heads: layerwise_cnn.")
        member = Member(member_config.name, model, trainable=True,
                        info={"model": member_config.model, "model_args": member_config.model_args})
        self.cohort = Cohort([member])
        allowed = range(len(self.plan()))
        for j in self.settings.stages:
            if j not in allowed:
                raise ConfigError(f"Invalid config: key 'greedy.stages.{j}' names a stage that does not exist; "
                                  f"allowed: {', '.join(map(str, allowed))} ({self.settings.mode} with "
                                  f"{model.num_blocks} blocks).")
        self.resolved = [self.stage_settings(index) for index in allowed]
        return self.cohort

    def plan(self) -> list[int]:
        """The block each stage trains: 0..J−1 (greedy), or one stage from block 0 (end to end)."""
        return [0] if self.settings.mode == "end_to_end" else list(range(self.model.num_blocks))

    def stage_settings(self, index: int) -> tuple[int, OptimConfig, ScheduleConfig]:
        """Epochs, optimizer and schedule of stage ``index`` (defaults ← greedy ← greedy.stages.index)."""
        member_config = self.config.members[0]
        stage = self.settings.stages.get(index)
        where = f"greedy.stages.{index}" if stage is not None else "greedy"
        epochs = (stage.epochs if stage and stage.epochs else None) or self.settings.epochs or self.config.train.epochs
        try:
            optim = OptimConfig(**{**self.config.member_optim(member_config).model_dump(), **(self.settings.optim or {}),
                                   **((stage.optim if stage else None) or {})})
            schedule = ScheduleConfig(**{**self.config.member_schedule(member_config).model_dump(),
                                         **(self.settings.schedule or {}), **((stage.schedule if stage else None) or {})})
        except ValidationError as error:
            first = error.errors()[0]
            raise ConfigError(f"Invalid config: the settings of stage {index} ({where}) are inconsistent: "
                              f"{'.'.join(map(str, first['loc'])) or 'optim'}: "
                              f"{first['msg'].removeprefix('Value error, ')}.") from None
        return epochs, optim, schedule

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        stages = []
        for index, block in enumerate(self.plan()):
            name = "end_to_end" if self.settings.mode == "end_to_end" else f"block{block}"
            stage = Stage(name, self.resolved[index][0], self.step, eval_members=[self.member.name])
            stage.start = lambda stage=stage, index=index: self.start_stage(stage, index)
            stages.append(stage)
        return stages

    def start_stage(self, stage: Stage, index: int) -> None:
        """Freeze blocks < j (eval mode), build stage j's optimizer and schedule, cache x_j if possible."""
        self._stop_clock()
        self._clock = (stage.name, time.perf_counter())
        block = self.plan()[index]
        model = self.model
        end_to_end = self.settings.mode == "end_to_end"
        model.depth = model.num_blocks if end_to_end else block + 1
        model.freeze_below(block)
        params = [p for p in model.parameters() if p.requires_grad]
        epochs, optim, schedule = self.resolved[index]
        self.member.optimizer = build_optimizer(params, optim)
        self.member.schedule = build_schedule(self.member.optimizer, schedule, epochs, len(self.train_stream))
        self.active_block = block
        cache = self.prefix_cache(stage.name, block)
        self._cached_stage = cache is not None
        stage.train_stream = None if cache is None else BatchStream(
            Split(cache, self.data.train.y), self.config.data.batch_size, _identity, self.device,
            seed=self.config.seed, shuffle=True, drop_last=True)

    # ------------------------------------------------------------------ prefix cache
    def prefix_cache(self, stage_name: str, block: int) -> Optional[torch.Tensor]:
        """x_j for every training item, computed once with the frozen blocks < j; None when not cached."""
        report: dict[str, Any] = {"block": block, "cached": False}
        self.cache_report[stage_name] = report
        augment = self.train_stream.augment
        if block == 0:
            report["reason"] = "no frozen prefix"
            return None
        if self.settings.cache == "off":
            report["reason"] = "greedy.cache is off"
            return None
        if augment is not None and augment.active:
            report["reason"] = "data is augmented"
            return None
        stream = BatchStream(self.data.train, self.config.data.eval_batch_size, self.normalizer, self.device,
                             shuffle=False)
        model = self.model
        was_training = model.training
        model.eval()  # the prefix is frozen: eval mode, whatever the cohort's mode
        try:
            with torch.no_grad():
                with self.autocast():
                    probe = model.prefix(stream.normalizer(stream.x[:1]), block).float()
                size = probe[0].numel() * probe.element_size() * len(self.data.train)
                report["bytes"] = size
                if size > self.settings.cache_max_mb * MIB:
                    report["reason"] = (f"{size / MIB:.1f} MiB is above greedy.cache_max_mb="
                                        f"{self.settings.cache_max_mb:g}")
                    return None
                with self.autocast():  # the frozen prefix runs as the training forward would (bf16 on CUDA)
                    parts = [model.prefix(batch.x, block).float() for _, batch in stream.epoch(0)]
        finally:
            model.train(was_training)
        report["cached"] = True
        return torch.cat(parts)

    # ------------------------------------------------------------------ one step
    def network_forward(self, member: Member, x: torch.Tensor, with_features: bool):
        """The training forward of stage j: the frozen prefix (blocks < j, no gradient; or its cached output,
        then ``x`` already is x_j), the trained block(s), and the active auxiliary head, whose pooled features
        feed the feature regularisers (centre loss). Run by the executor under the recipe's autocast."""
        model, block = self.model, self.active_block
        if self._cached_stage:
            hidden = x
        else:
            with torch.no_grad():
                hidden = model.prefix(x, block)
        for trained in model.blocks[block:model.depth]:
            hidden = trained(hidden)
        head = model.heads[model.depth - 1]
        features = head.body(hidden)
        return head.linear(features), features if with_features else None

    # ------------------------------------------------------------------ state and summary
    def callbacks(self) -> list[Callback]:
        return [*super().callbacks(), StageClock(self)]

    def _stop_clock(self) -> None:
        if self._clock is not None:
            name, started = self._clock
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - started
            self._clock = None

    def extra_state(self) -> dict:
        if self._clock is not None:  # bank the running stage's time so far, keep the clock running
            name, started = self._clock
            now = time.perf_counter()
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + now - started
            self._clock = (name, now)
        return {"cache_report": self.cache_report, "stage_seconds": self.stage_seconds}

    def load_extra_state(self, state: dict) -> None:
        self.cache_report = dict(state.get("cache_report", {}))
        self.stage_seconds = dict(state.get("stage_seconds", {}))

    def network_record(self, member: Member) -> dict[str, Any]:
        """The layerwise network with the depth it predicts at (blocks[:depth] then head[depth − 1])."""
        record = super().network_record(member)
        record["attributes"]["depth"] = int(self.model.depth)
        return record

    @torch.no_grad()
    def head_scores(self) -> dict[str, Any]:
        """Top-1 of every auxiliary head z_j and of the ensemble Z = Σ_j 2^j z_j / Σ_j 2^j, per split."""
        model = self.model
        was_training = model.training
        model.eval()
        result: dict[str, Any] = {}
        for split, stream in self.eval_streams.items():
            if len(stream.split) == 0:
                continue
            heads: list[list[torch.Tensor]] = [[] for _ in range(model.num_blocks)]
            labels = []
            for _, batch in stream.epoch(0):
                for j, z in enumerate(model.head_logits(batch.x)):
                    heads[j].append(z.float().cpu())
                labels.append(batch.y.cpu())
            y = torch.cat(labels)
            logits = [torch.cat(z) for z in heads]
            ensemble = weighted_ensemble(logits)
            result[split] = {"heads_top1": [score(z.log_softmax(1), y)["top1"] for z in logits],
                             "ensemble": score(ensemble.log_softmax(1), y)}
        model.train(was_training)
        return result

    def summary_extra(self) -> dict[str, Any]:
        self._stop_clock()
        extra: dict[str, Any] = {"mode": self.settings.mode, "blocks": self.model.num_blocks,
                                 "stage_epochs": [r[0] for r in self.resolved], "cache": self.cache_report,
                                 "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}
        if self.settings.mode == "greedy":
            extra.update(self.head_scores())
        return {**super().summary_extra(), "greedy": extra}


class StageClock(Callback):
    """Stops the recipe's stage clock when a stage ends (before the final evaluation of the run)."""

    may_change_members = False

    def __init__(self, recipe: GreedyRecipe):
        self.recipe = recipe

    def on_stage_end(self, trainer, index, stage) -> None:
        self.recipe._stop_clock()
