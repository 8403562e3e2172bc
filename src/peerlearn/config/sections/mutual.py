"""The ``mutual`` section: Deep Mutual Learning (recipes ``mutual``; ``independent`` ignores it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peerlearn.config.schema import Section


class MutualConfig(Section):
    """Deep Mutual Learning: L_k = CE(p_k, y) + weight · 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)."""

    weight: float = Field(1.0, ge=0, description="mimicry weight λ (0 = independent training)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the mimicry term (T² scaling when ≠ 1)")
    divergence: Literal["kl", "js"] = "kl"
    teacher: Literal["peers", "ensemble"] = Field("peers", description="ensemble = DML_e (mean of the other members)")
    feature_l2: float = Field(0.0, ge=0, description="weight of the L2 pull between members' penultimate features")
    update: Literal["simultaneous", "sequential"] = "simultaneous"
    mimic_on: Literal["all", "labelled"] = Field(
        "all", description="semi-supervised: mimicry on labelled ∪ unlabelled (DML-all) or labelled only"
    )
