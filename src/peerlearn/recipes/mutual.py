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

The simultaneous update also runs fused (``engine.fused``: one vmapped model, the loss on the
stacked logits [K, B, C]) and distributed (one member per process, probabilities all-gathered;
see ``engine.distributed``). Both give the loop's weights within float tolerance.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from peerlearn.data.batches import Batch
from peerlearn.engine.cohort import Member, preserved_batchnorm_stats
from peerlearn.engine.trainer import check_finite
from peerlearn.errors import ConfigError
from peerlearn.engine.distributed import all_gather_rows, average_gradients
from peerlearn.engine.fused import FusedCohort
from peerlearn.losses import (feature_l2, mutual_mimicry, soft_probs, stacked_feature_l2,
                              stacked_mutual_mimicry)
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

    fused: Optional[FusedCohort] = None

    def build_cohort(self):
        cohort = super().build_cohort()
        dims = {m.name: int(getattr(m.model, "feature_dim", 0)) for m in cohort.trainable}
        if self.feature_weight > 0 and len(set(dims.values())) > 1:
            raise ConfigError("Invalid config: key 'mutual.feature_l2' is set, but the members' penultimate features "
                              f"differ in size ({', '.join(f'{k}: {v}' for k, v in dims.items())}); the L2 pull needs "
                              "one size (choose features_from / widths that agree, or set mutual.feature_l2=0).")
        if self.config.engine.fused:
            members = cohort.trainable
            self.fused = FusedCohort([m.model for m in members], [m.name for m in members],
                                     with_features=self._needs_features())
        return cohort

    def _forward(self, member: Member, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.forward(member, x, self._needs_features())

    def member_loss(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor],
                    probs: dict[str, torch.Tensor], all_features: dict[str, torch.Tensor],
                    batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_k for member ``name`` given every member's current (detached) probabilities."""
        settings = self.settings
        mimicry = pull = None
        if self.mimicry_weight > 0 and len(probs) > 1:
            peers = [p for other, p in probs.items() if other != name]
            mimicry = mutual_mimicry(logits, peers, settings.temperature, settings.divergence, settings.teacher,
                                     mask=self._mimicry_rows(batch))
        if self.feature_weight > 0 and features is not None and len(all_features) > 1:
            pull = feature_l2(features, [f for other, f in all_features.items() if other != name])
        return self.combine(name, logits, features, batch, mimicry, pull)

    def _mimicry_rows(self, batch: Batch) -> Optional[torch.Tensor]:
        return batch.labelled if self.settings.mimic_on == "labelled" else None

    def combine(self, name: str, logits: torch.Tensor, features: Optional[torch.Tensor], batch: Batch,
                mimicry: Optional[torch.Tensor], pull: Optional[torch.Tensor]):
        """L_k = supervised (CE + regularisers) + λ · mimicry + μ · feature pull, with the parts to log."""
        loss = self.supervised_loss(name, logits, batch.y, features)
        parts = dict(self.regularizer.last_parts.get(name, {}))  # ce and any regulariser terms
        if mimicry is not None:
            loss = loss + self.mimicry_weight * mimicry
            parts["mimicry"] = mimicry.detach()
        if pull is not None:
            loss = loss + self.feature_weight * pull
            parts["feature_l2"] = pull.detach()
        return loss, parts

    def step(self, batch: Batch) -> dict[str, Any]:
        if self.distributed is not None:
            return self.distributed_step(batch)
        if self.fused is not None:
            return self.fused_step(batch)
        if self.settings.update == "sequential":
            return self.sequential_step(batch)
        return self.simultaneous_step(batch)

    def fused_step(self, batch: Batch) -> dict[str, Any]:
        """Simultaneous update with one batched forward; mimicry and feature pull on the stacked outputs."""
        members = self.cohort.trainable
        with self.autocast():
            logits, features = self.fused(batch.x)
        logits = logits.float()
        features = features.float() if features is not None else None
        mimicry = pull = None
        if self.mimicry_weight > 0 and len(members) > 1:
            s = self.settings
            mimicry = stacked_mutual_mimicry(logits, s.temperature, s.divergence, s.teacher,
                                             mask=self._mimicry_rows(batch))
        if self.feature_weight > 0 and features is not None and len(members) > 1:
            pull = stacked_feature_l2(features)
        losses, log = [], {}
        for k, member in enumerate(members):
            loss, parts = self.combine(member.name, logits[k], None if features is None else features[k], batch,
                                       None if mimicry is None else mimicry[k], None if pull is None else pull[k])
            losses.append(loss)
            log.update({f"{member.name}/{key}": v for key, v in parts.items()})
        log["loss"] = self.update(members, losses)
        return log

    def distributed_step(self, batch: Batch) -> dict[str, Any]:
        """Simultaneous update with this process's member only; the peers' probabilities (and features,
        for the feature pull) come from the other processes by all-gather. With several processes per
        member, each takes its slice of the batch and gradients are averaged over the member's processes."""
        ctx = self.distributed
        member = self.cohort[ctx.member_name]
        batch = ctx.shard(batch)
        logits, features = self._forward(member, batch.x)
        probs: dict[str, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        if self.mimicry_weight > 0 and ctx.num_members > 1:
            probs = dict(zip(ctx.members, all_gather_rows(ctx, soft_probs(logits, self.settings.temperature))))
        if features is not None and ctx.num_members > 1:
            feats = dict(zip(ctx.members, all_gather_rows(ctx, features.detach())))
        loss, parts = self.member_loss(member.name, logits, features, probs, feats, batch)
        check_finite(loss, member.name, self.trainer)
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
        losses, log = [], {}
        for member in members:
            logits, features = outputs[member.name]
            loss, parts = self.member_loss(member.name, logits, features, probs, feats, batch)
            losses.append(loss)
            log.update({f"{member.name}/{k}": v for k, v in parts.items()})
        log["loss"] = self.update(members, losses)
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
            total = total + self.update([member], [loss])
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
