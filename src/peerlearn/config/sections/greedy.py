"""The ``greedy`` section: greedy layerwise learning (recipe ``greedy``)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from peerlearn.config.schema import OptimConfig, ScheduleConfig, Section, check_partial_section


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
