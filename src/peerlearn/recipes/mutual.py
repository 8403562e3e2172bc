"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018) and independent training.

Loss of member k in a cohort of K:

    L_k = CE(p_k, y) + λ · 1/(K−1) · Σ_{l≠k} KL(p_l ‖ p_k)  [+ μ · feature L2]

with p = softmax(z / T) in the mimicry term (×T² when T ≠ 1) and the peers' p_l constant targets.
Variants: JS divergence, DML_e (KL to the mean of the other members), mimicry on labelled items only
(semi-supervised "DML-labelled"; CE always uses labelled items only). Independent training is λ = 0.

This module holds the loss only. How a step runs is an executor's (``engine.executors``):
``simultaneous`` (every member steps on one forward, the paper's distributed variant), ``sequential``
(Algorithm 1: each member steps on its peers' latest predictions), and the simultaneous update fused
(``engine.fused``: one vmapped model, the loss on the stacked logits [K, B, C]) or distributed (one member
per process, probabilities all-gathered). All give the loop's weights within float tolerance.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from peerlearn.config import Changeable, Section
from peerlearn.data.batches import Batch
from peerlearn.engine.executors import Executor, FusedExecutor, select_executor
from peerlearn.engine.fused import FusedCohort
from peerlearn.errors import ConfigError
from peerlearn.losses import feature_l2, mutual_mimicry
from peerlearn.recipes.base import Recipe


class MutualConfig(Section):
    """Deep Mutual Learning: L_k = CE(p_k, y) + weight · 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)."""

    weight: float = Changeable(1.0, ge=0, description="mimicry weight λ (0 = independent training)")
    temperature: float = Changeable(1.0, gt=0, description="softmax temperature of the mimicry term (T² scaling "
                                                            "when ≠ 1)")
    divergence: Literal["kl", "js"] = "kl"
    teacher: Literal["peers", "ensemble"] = Field("peers", description="ensemble = DML_e (mean of the other members)")
    feature_l2: float = Changeable(0.0, ge=0, description="weight of the L2 pull between members' penultimate features")
    update: Literal["simultaneous", "sequential"] = "simultaneous"
    mimic_on: Literal["all", "labelled"] = Field(
        "all", description="semi-supervised: mimicry on labelled ∪ unlabelled (DML-all) or labelled only"
    )


class MutualRecipe(Recipe):
    name = "mutual"
    section = "mutual"
    section_model = MutualConfig
    supports_fused = True  # engine.executors.FusedExecutor (simultaneous update)
    supports_distributed = True  # engine.executors.DistributedExecutor (simultaneous update)

    @classmethod
    def check_capabilities(cls, config, world_size: int = 1) -> None:
        """Fused and distributed runs make the simultaneous update: every member steps on one forward of all.

        ``mutual.update: sequential`` (Algorithm 1) steps each member on its peers' latest predictions, which
        neither a vmapped cohort nor one member per process can do."""
        super().check_capabilities(config, world_size)
        if cls.update_rule(config) == "simultaneous":
            return
        if config.engine.fused:
            raise ConfigError("Invalid config: key 'engine.fused' is true, but 'mutual.update' is 'sequential'; a "
                              "fused cohort updates all members at once: use mutual.update=simultaneous or "
                              "engine.fused=false.")
        if world_size > 1:
            raise ConfigError(f"Invalid config: key 'mutual.update' has the value 'sequential', but a distributed "
                              f"run ({world_size} processes) updates all members at once; allowed: simultaneous.")

    @classmethod
    def update_rule(cls, config) -> str:
        """How the members step: ``mutual.update`` (simultaneous or sequential)."""
        return config.mutual.update

    @property
    def settings(self):
        return self.config.mutual

    @property
    def mimicry_weight(self) -> float:
        return self.settings.weight

    @property
    def feature_weight(self) -> float:
        return self.settings.feature_l2

    def _needs_features(self) -> bool:
        return self.feature_weight > 0 or self.regularizer.needs_features

    @property
    def fused(self) -> Optional[FusedCohort]:
        """The batched model of a fused cohort (``engine.fused``), else None."""
        return self.executor.fused if isinstance(self.executor, FusedExecutor) else None

    def build_cohort(self):
        cohort = super().build_cohort()
        dims = {m.name: int(getattr(m.model, "feature_dim", 0)) for m in cohort.trainable}
        if self.feature_weight > 0 and len(set(dims.values())) > 1:
            raise ConfigError("Invalid config: key 'mutual.feature_l2' is set, but the members' penultimate features "
                              f"differ in size ({', '.join(f'{k}: {v}' for k, v in dims.items())}); the L2 pull needs "
                              "one size (choose features_from / widths that agree, or set mutual.feature_l2=0).")
        self.executor = self.make_executor()
        return cohort

    def make_executor(self) -> Executor:
        return select_executor(self, self.config.engine.fused, self.settings.update)

    # ------------------------------------------------------------------ the loss (what executors call)
    def shared_outputs(self) -> tuple[bool, bool]:
        """Members read their peers' probabilities when λ > 0 and their features when μ > 0."""
        return self.mimicry_weight > 0, self.feature_weight > 0

    def losses(self, out, batch: Batch, names: list[str]):
        """L_k for each named member, with the peers' probabilities p_l = softmax(z_l / T) (detached) and
        features (detached) taken from ``out``, the step's outputs."""
        settings = self.settings
        result = {}
        for name in names:
            logits, features = out.logits[name], out.features.get(name)
            mimicry = pull = None
            peers = out.peers(name)
            if self.mimicry_weight > 0 and peers:
                mimicry = mutual_mimicry(logits, [out.probs(peer, settings.temperature) for peer in peers],
                                         settings.temperature, settings.divergence, settings.teacher,
                                         mask=self._mimicry_rows(batch))
            peer_features = out.peer_features(name)
            if self.feature_weight > 0 and features is not None and peer_features:
                pull = feature_l2(features, [f.detach() for f in peer_features])
            result[name] = self.combine(name, logits, features, batch, mimicry, pull)
        return result

    def _mimicry_rows(self, batch: Batch) -> Optional[torch.Tensor]:
        return batch.labelled if self.settings.mimic_on == "labelled" else None

    def combine(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor], batch: Batch,
                mimicry: Optional[torch.Tensor], pull: Optional[torch.Tensor]):
        """L_k = supervised (CE + regularisers) + λ · mimicry + μ · feature pull, with the parts to log."""
        loss = self.supervised_loss(name, logits, batch.y, features)
        parts = dict(self.regularizer.last_parts.get(name, {}))  # ce and any regulariser terms
        if mimicry is not None:
            loss = loss + _weighted(self.mimicry_weight, mimicry)
            parts["mimicry"] = mimicry.detach()
        if pull is not None:
            loss = loss + _weighted(self.feature_weight, pull)
            parts["feature_l2"] = pull.detach()
        return loss, parts


def _weighted(weight: float, term: torch.Tensor) -> torch.Tensor:
    """weight · term (the term itself at weight 1: exact, and one operation fewer per step)."""
    return term if weight == 1 else weight * term


class IndependentRecipe(MutualRecipe):
    """K members trained side by side on the same batches, each with CE only (DML with λ = 0)."""

    name = "independent"
    section = None  # λ = 0: the mutual section's settings do not apply
    section_model = None

    @classmethod
    def update_rule(cls, config) -> str:
        return "simultaneous"  # without mimicry both updates give the same weights: the one that runs everywhere

    @property
    def settings(self) -> MutualConfig:
        """No section of its own: the mutual defaults, whose mimicry is switched off below (simultaneous update)."""
        return MutualConfig()

    @property
    def mimicry_weight(self) -> float:
        return 0.0

    @property
    def feature_weight(self) -> float:
        return 0.0

    def _needs_features(self) -> bool:
        return self.regularizer.needs_features

    def make_executor(self) -> Executor:
        return select_executor(self, self.config.engine.fused, "simultaneous")

    def losses(self, out, batch: Batch, names: list[str]):
        """L_k = CE(z_k, y) (+ the shared regularisers): the base recipe's supervised loss."""
        return Recipe.losses(self, out, batch, names)
