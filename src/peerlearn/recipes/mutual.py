"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018) and independent training.

Loss of member k in a cohort of K:

    L_k = CE(p_k, y) + λ · 1/(K−1) · Σ_{l≠k} KL(p_l ‖ p_k)  [+ μ · feature L2]

with p = softmax(z / T) in the mimicry term (×T² when T ≠ 1) and the peers' p_l constant targets.
Variants: JS divergence, DML_e (KL to the mean of the other members), mimicry on labelled items only
(semi-supervised "DML-labelled"; CE always uses labelled items only). Independent training is λ = 0.

Two update orders:

* ``simultaneous``: all members predict once, every member steps (the paper's distributed variant):
  one forward and one backward per member per step.
* ``sequential`` (Algorithm 1): member 1 steps, its predictions are refreshed, member 2 steps, ...
  Only the member just updated is recomputed (without grad); the others' graphs are still valid
  because their weights have not changed since their forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from peerlearn.data.batches import Batch
from peerlearn.engine.cohort import Member, preserved_batchnorm_stats
from peerlearn.engine.trainer import check_finite
from peerlearn.losses import feature_l2, mutual_mimicry, soft_probs
from peerlearn.recipes.base import Recipe


class MutualRecipe(Recipe):
    name = "mutual"

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

    def _forward(self, member: Member, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self._needs_features():
            return member.model.forward_with_features(x)
        return member.model(x), None

    def member_loss(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor],
                    probs: dict[str, torch.Tensor], all_features: dict[str, torch.Tensor],
                    batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_k for member ``name`` given every member's current (detached) probabilities."""
        settings = self.settings
        loss = self.supervised_loss(name, logits, batch.y, features)
        parts = dict(self.regularizer.last_parts.get(name, {}))  # ce and any regulariser terms
        rows = batch.labelled if settings.mimic_on == "labelled" else slice(None)
        # a batch may hold no labelled item at all: then DML-labelled has nothing to mimic on
        has_rows = settings.mimic_on != "labelled" or bool(rows.any())
        if self.mimicry_weight > 0 and len(probs) > 1 and has_rows:
            peers = [p[rows] for other, p in probs.items() if other != name]
            mimicry = mutual_mimicry(logits[rows], peers, settings.temperature, settings.divergence, settings.teacher)
            loss = loss + self.mimicry_weight * mimicry
            parts["mimicry"] = mimicry.detach()
        if self.feature_weight > 0 and features is not None and len(all_features) > 1:
            pull = feature_l2(features, [f for other, f in all_features.items() if other != name])
            loss = loss + settings.feature_l2 * pull
            parts["feature_l2"] = pull.detach()
        return loss, parts

    def step(self, batch: Batch) -> dict[str, Any]:
        if self.settings.update == "sequential":
            return self.sequential_step(batch)
        return self.simultaneous_step(batch)

    def _targets(self, outputs: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]):
        temperature = self.settings.temperature
        probs = {n: soft_probs(z, temperature) for n, (z, _) in outputs.items()} if self.mimicry_weight > 0 else {}
        feats = ({n: f.detach() for n, (_, f) in outputs.items() if f is not None}
                 if self.feature_weight > 0 else {})
        return probs, feats

    def simultaneous_step(self, batch: Batch) -> dict[str, Any]:
        members = self.cohort.trainable
        outputs = {m.name: self._forward(m, batch.x) for m in members}
        probs, feats = self._targets(outputs)
        total = 0.0
        log: dict[str, Any] = {}
        for member in members:
            logits, features = outputs[member.name]
            loss, parts = self.member_loss(member.name, logits, features, probs, feats, batch)
            check_finite(loss, member.name, getattr(self, "trainer", None))
            total = total + loss
            log.update({f"{member.name}/{k}": v for k, v in parts.items()})
        for member in members:
            member.zero_grad()
        # The members' graphs are disjoint (peers are detached), so one backward of the sum gives
        # each member exactly the gradient of its own loss.
        total.backward()
        for member in members:
            member.step()
        log["loss"] = total.detach() / len(members)
        return log

    def sequential_step(self, batch: Batch) -> dict[str, Any]:
        members = self.cohort.trainable
        outputs = {m.name: self._forward(m, batch.x) for m in members}
        probs, feats = self._targets(outputs)
        total = 0.0
        log: dict[str, Any] = {}
        for index, member in enumerate(members):
            logits, features = outputs[member.name]
            loss, parts = self.member_loss(member.name, logits, features, probs, feats, batch)
            check_finite(loss, member.name, getattr(self, "trainer", None))
            member.zero_grad()
            loss.backward()
            member.step()
            total = total + loss.detach()
            log.update({f"{member.name}/{k}": v for k, v in parts.items()})
            if index < len(members) - 1 and (probs or feats):
                # refresh this member's predictions with its new weights, for the members after it
                with torch.no_grad(), preserved_batchnorm_stats(member.model):
                    new_logits, new_features = self._forward(member, batch.x)
                if probs:
                    probs[member.name] = soft_probs(new_logits, self.settings.temperature)
                if new_features is not None:
                    feats[member.name] = new_features
        log["loss"] = total / len(members)
        return log


class IndependentRecipe(MutualRecipe):
    """K members trained side by side on the same batches, each with CE only (DML with λ = 0)."""

    name = "independent"

    @property
    def mimicry_weight(self) -> float:
        return 0.0

    @property
    def feature_weight(self) -> float:
        return 0.0

    def _needs_features(self) -> bool:
        return self.regularizer.needs_features
