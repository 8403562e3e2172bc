"""CL-ILR — collaborative learning with intermediate-level representation sharing (Song & Chai, NeurIPS 2018).

H classifier heads on shared layers (a multi-branch network, heads = branches); each head learns from the labels
and from the consensus of the other heads:

    q_h = softmax( (1/(H−1)) · Σ_{j≠h} z_j / T )                      (a constant target)
    L   = Σ_h [ (1 − β) · CE(z_h, y) + β · T² · KL(q_h ‖ softmax(z_h / T)) ]

(``losses.cl_ilr_loss``), and the backpropagation rescaling of the paper: the gradient the heads send into the
shared layers is multiplied by 1/H (``trunk_grad_scale``), so the shared layers get the mean of the heads'
gradients, not their sum. Deployed: one head with the shared layers (``net0``); ensemble: the H heads.

Defaults: H = 3 heads (the footing of the PCL paper's comparison), β = 0.5 (both terms weighted equally), T = 3:
the paper leaves T to the user; 3 is the value of the other methods here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peerlearn.config import Section
from peerlearn.losses import cl_ilr_loss
from peerlearn.recipes.online_base import BranchRecipe


class ClIlrConfig(Section):
    """CL-ILR: L = Σ_h [(1−β)·CE(z_h, y) + β·T²·KL(q_h ‖ σ(z_h/T))], q_h the other heads' consensus; the shared
    layers' gradient × 1/H."""

    branches: int = Field(3, ge=2, le=32, description="H, heads on the shared layers")
    temperature: float = Field(3.0, gt=0, description="T of the soft targets")
    beta: float = Field(0.5, ge=0, le=1, description="β, weight of the soft term ((1−β) weights the CE)")
    average: Literal["logits", "probs"] = Field("logits", description="consensus of the other heads: softmax of "
                                                                      "their mean logits, or their mean probabilities")
    rescale: bool = Field(True, description="backpropagation rescaling: the shared layers' gradient × 1/H")


class ClIlrRecipe(BranchRecipe):
    name = "cl_ilr"
    section = "cl_ilr"
    section_model = ClIlrConfig

    @classmethod
    def trunk_grad_scale(cls, settings) -> float:
        return 1.0 / settings.branches if settings.rescale else 1.0

    @classmethod
    def evaluated_rows(cls, config) -> list[str]:
        return cls.ensemble_rows(config)

    @classmethod
    def ensemble_rows(cls, config) -> list[str]:
        net = config.members[0].name
        return [f"{net}{k}" for k in range(config.cl_ilr.branches)]

    @classmethod
    def deployed_row(cls, config) -> str:
        return f"{config.members[0].name}0"

    def declare_parts(self, owner) -> None:
        self.add_branches(owner.name, owner.network, self.ensemble_rows(self.config))

    def losses(self, out, batch, names):
        """``cl_ilr_loss`` of the heads' logits [H, B, C] (targets constant)."""
        (name,) = names
        settings = self.settings
        result = cl_ilr_loss(out.logits[name], batch.y, settings.temperature, settings.beta, settings.average)
        return {name: (result.loss, {key: value.detach() for key, value in result.parts.items()})}
