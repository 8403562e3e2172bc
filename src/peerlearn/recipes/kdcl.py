"""KDCL — online knowledge distillation via collaborative learning (Guo et al., CVPR 2020).

K separate member networks, of any architectures, each fed its own augmented view of the batch (member k reads
view k: ``online_base.augmented_view``); one teacher is built from all members' logits by an ensembling rule and
distilled into every member:

    L_k = CE(z_k, y) + λ · T² · KL(softmax(z_t / T) ‖ softmax(z_k / T)),        z_t constant (``losses.kdcl_loss``)

Rules (``kdcl.teacher``):

    min_logit   z_t,c = min_k (z_k,c − z_k,y)                        (``min_logit_teacher``, per batch)
    linear      z_t = Σ_k w_k z_k, w = argmin_{simplex} CE(Σ_k w_k z_k, y) on the batch   (``linear_teacher``)
    general     z_t = Σ_k w_k z_k with w fitted the same way on the members' logits on the *validation split*
                (``generalization_weights``), refitted at the first step of every epoch after the first (the
                first epoch uses w_k = 1/K); the weights are checkpointed, so a resumed run uses the same ones.

Every rule needs every label (the teacher is built around the target class). Deployed: any member; the summary
names ``kdcl.deploy`` (default: the first). Ensemble: all members. Defaults: three members of the data's default
network (``online_base.default_network``), T = 3 (the paper gives none; the value of the other methods here),
λ = 1, MinLogit (the rule needing no fit).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import Field

from peerlearn.config import Section
from peerlearn.engine.evaluation import predict
from peerlearn.errors import ConfigError
from peerlearn.losses import generalization_weights, kdcl_loss, linear_teacher, min_logit_teacher, weighted_teacher
from peerlearn.recipes.base import Recipe
from peerlearn.recipes.online_base import (augmented_view, check_regularizers, check_views_possible, default_network,
                                           warn_without_augmentation)

RULES = ("min_logit", "linear", "general")


class KdclConfig(Section):
    """KDCL: L_k = CE(z_k, y) + λ·T²·KL(σ(z_t/T) ‖ σ(z_k/T)), z_t from all members by an ensembling rule."""

    teacher: Literal["min_logit", "linear", "general"] = Field(
        "min_logit", description="ensembling rule of the teacher: min_logit, linear (weights fitted on the batch), "
                                 "general (weights fitted on the validation split once per epoch)")
    temperature: float = Field(3.0, gt=0, description="T of the KL term")
    kl_weight: float = Field(1.0, ge=0, description="λ, weight of T²·KL")
    deploy: Optional[str] = Field(None, description="the member the summary names as deployed (default: the first)")


class KdclRecipe(Recipe):
    name = "kdcl"
    section = "kdcl"
    section_model = KdclConfig

    @classmethod
    def defaults(cls, config) -> dict[str, Any]:
        """Three members of the data's default network (m0, m1, m2)."""
        return {"members": [{"name": f"m{k}", **default_network(config, None)} for k in range(3)]}

    @classmethod
    def validate(cls, config, data) -> None:
        """Two or more members, all trainable; every training label known; a validation split for ``general``."""
        super().validate(config, data)
        frozen = [m.name for m in config.members if not m.trainable]
        if len(config.members) < 2 or frozen:
            raise ConfigError(f"Invalid config: key 'members': recipe 'kdcl' trains two or more members together, all "
                              f"trainable; got {len(config.members)}" + (f", frozen: {', '.join(frozen)}" if frozen
                                                                         else "") + ".")
        if config.kdcl.deploy is not None and config.kdcl.deploy not in [m.name for m in config.members]:
            raise ConfigError(f"Invalid config: key 'kdcl.deploy' has the value {config.kdcl.deploy!r}; allowed: "
                              f"{', '.join(m.name for m in config.members)}.")
        check_regularizers(config, "kdcl")
        check_views_possible(data, "kdcl")
        if bool((data.train.y < 0).any()):
            raise ConfigError("Invalid config: key 'data.labelled': recipe 'kdcl' builds its teacher around each item's "
                              "label, so every training item needs one; leave data.labelled out.")
        if config.kdcl.teacher == "general" and len(data.val) == 0:
            raise ConfigError("Invalid config: key 'kdcl.teacher' is 'general', which fits its weights on the "
                              "validation split, but there is none; set data.val_fraction > 0 (or data.val_size).")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights: Optional[torch.Tensor] = None  # the general rule's w [K]
        self.weights_epoch = -1  # the epoch they were fitted for

    @property
    def settings(self) -> KdclConfig:
        return self.config.kdcl

    def build_cohort(self):
        cohort = super().build_cohort()
        self.view_of = {member.name: k for k, member in enumerate(cohort.trainable)}
        warn_without_augmentation(self)
        return cohort

    def member_input(self, member, batch) -> torch.Tensor:
        """Member k's own augmented view of the batch (member 0: the batch as drawn)."""
        return augmented_view(self, batch, self.view_of[member.name])

    # ------------------------------------------------------------------ the teacher
    def teacher(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The teacher logits [B, C] of the configured rule from the members' logits [K, B, C] (constant)."""
        rule = self.settings.teacher
        if rule == "min_logit":
            return min_logit_teacher(logits, labels)
        if rule == "linear":
            return linear_teacher(logits, labels)
        return weighted_teacher(logits, self.general_weights(logits.shape[0]).to(logits.device))

    def general_weights(self, count: int) -> torch.Tensor:
        """w of the general rule for the current epoch: 1/K in the first, then refitted once per epoch on the
        members' logits on the validation split (eval mode, no gradient; the training mode is restored)."""
        epoch = self.trainer.position.global_epoch if self.trainer is not None else 0
        if self.weights is None or self.weights_epoch != epoch:
            if epoch == 0:
                self.weights = torch.full((count,), 1.0 / count)
            else:
                names = [m.name for m in self.cohort.trainable]
                logits, labels = predict(self.cohort, self.eval_streams["val"], names, progress="off")
                stacked = torch.stack([logits[n] for n in names]).clone()
                self.weights = generalization_weights(stacked, labels.clone()).cpu()
            self.weights_epoch = epoch
        return self.weights

    def losses(self, out, batch, names):
        """L_k for every member, each on its own view, against one teacher of all members' logits."""
        settings = self.settings
        stacked = torch.stack([out.logits[name] for name in names])
        teacher = self.teacher(stacked.detach(), batch.y)
        result = {}
        for k, name in enumerate(names):
            loss = kdcl_loss(stacked[k:k + 1], teacher, batch.y, settings.temperature, settings.kl_weight)
            result[name] = (loss.loss, {key: value.detach() for key, value in loss.parts.items()})
        return result

    # ------------------------------------------------------------------ state and summary
    def extra_state(self) -> dict[str, Any]:
        state = super().extra_state()
        if self.weights is not None:
            state["kdcl"] = {"weights": self.weights.tolist(), "epoch": self.weights_epoch}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        saved = state.get("kdcl")
        if saved:
            self.weights, self.weights_epoch = torch.tensor(saved["weights"]), int(saved["epoch"])

    def summary_extra(self) -> dict[str, Any]:
        extra = {**super().summary_extra(), "deployed": self.settings.deploy or self.config.members[0].name}
        if self.settings.teacher == "general" and self.weights is not None:
            extra["kdcl_weights"] = [round(float(w), 6) for w in self.weights]
        return extra
