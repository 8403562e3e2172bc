"""ONE — On-the-fly Native Ensemble (Lan, Zhu & Gong, NeurIPS 2018).

K branches on a shared trunk; a gate on the trunk's output weights the branches' logits into the teacher

    z_e = Σ_k g_k · z_k,        g = softmax(ReLU(BN(FC(avgpool(trunk output)))))      (OneGate, [B, K])
    L   = Σ_k CE(z_k, y) + CE(z_e, y) + λ · T² · Σ_k KL(softmax(z_e / T) ‖ softmax(z_k / T))

with the teacher's targets constant in the KL (``losses.one_loss``): the gate learns from CE(z_e, y) alone, each
branch from its CE, its share of CE(z_e, y) and its KL. Deployed: one branch with the trunk (``net0``), or the
gated ensemble (the row ``gate``); ``one.deploy`` says which one the summary names.

Cohort: one member, the multi-branch network (``net``); views ``net0 … net{K−1}`` (trunk + branch k), the
auxiliary ``gate`` (a ``OneGate``; its predictions are the gated ensemble of the branches). Defaults: K = 3, T = 3
(the authors' code), λ = 1 (the paper; the code ramps it up over 80 epochs: ``one.rampup_epochs: 80``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from peerlearn.config import Section
from peerlearn.losses import gated_ensemble, one_loss
from peerlearn.models.online_parts import OneGate
from peerlearn.recipes.online_base import BranchRecipe


class OneConfig(Section):
    """ONE: L = Σ_k CE(z_k, y) + CE(z_e, y) + λ·T²·Σ_k KL(σ(z_e/T) ‖ σ(z_k/T)), z_e = Σ_k g_k z_k."""

    branches: int = Field(3, ge=2, le=32, description="K, branches on the shared trunk")
    temperature: float = Field(3.0, gt=0, description="T of the KL terms (the authors' code: 3)")
    kl_weight: float = Field(1.0, ge=0, description="λ, weight of T²·Σ_k KL (the paper: 1)")
    rampup_epochs: float = Field(0.0, ge=0, description="λ times sigmoid_rampup(epoch, this) (the authors' code: "
                                                        "80; 0: λ constant, as in the paper)")
    gate_detach_input: bool = Field(False, description="the gate reads a detached trunk output (then CE(z_e, y) "
                                                      "does not reach the trunk through the gate)")
    deploy: Literal["branch", "gate"] = Field("branch", description="what the summary names as deployed: branch 0 "
                                                                    "with the trunk, or the gated ensemble")


class GatedEnsemble(nn.Module):
    """The gated ensemble's logits z_e(x) = Σ_k g_k(x) z_k(x) of a multi-branch network and its gate (the row
    ``gate``: evaluated, exported)."""

    def __init__(self, net: nn.Module, gate: OneGate):
        super().__init__()
        self.net, self.gate = net, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return gated_ensemble(out.logits, self.gate(out.trunk))


class OneRecipe(BranchRecipe):
    name = "one"
    section = "one"
    section_model = OneConfig

    @classmethod
    def evaluated_rows(cls, config) -> list[str]:
        return cls.ensemble_rows(config) + ["gate"]

    @classmethod
    def ensemble_rows(cls, config) -> list[str]:
        net = config.members[0].name
        return [f"{net}{k}" for k in range(config.one.branches)]

    @classmethod
    def deployed_row(cls, config) -> str:
        return "gate" if config.one.deploy == "gate" else f"{config.members[0].name}0"

    def declare_parts(self, owner) -> None:
        net = owner.network
        self.add_branches(owner.name, net, self.ensemble_rows(self.config))
        spec = {"in_channels": trunk_channels(net, self.normalizer(self.data.train.x[:2].to(self.device))),
                "branches": net.num_branches, "detach_input": self.settings.gate_detach_input, "of": owner.name}
        gate = self.build_auxiliary("gate", spec)
        self.add_auxiliary("gate", gate, spec, predictor=GatedEnsemble(net, gate.to(self.device)))

    @classmethod
    def build_auxiliary(cls, name: str, spec: dict[str, Any]) -> nn.Module:
        return OneGate(int(spec["in_channels"]), int(spec["branches"]), detach_input=bool(spec["detach_input"]))

    @classmethod
    def build_predictor(cls, name: str, spec: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
        return GatedEnsemble(modules[spec["of"]], modules[name])

    def losses(self, out, batch, names):
        """``one_loss`` of the network's branch logits [K, B, C] with the gate's weights on this step's trunk
        output; the gate (an auxiliary module) steps on the same loss."""
        (name,) = names
        settings = self.settings
        gate = self.cohort["gate"].model(self.trunk_output)
        weight = settings.kl_weight * self.rampup(settings.rampup_epochs)
        result = one_loss(out.logits[name], gate, batch.y, settings.temperature, weight)
        return {name: (result.loss, {key: value.detach() for key, value in result.parts.items()})}


@torch.no_grad()
def trunk_channels(net, sample: torch.Tensor) -> int:
    """Channels (or features) of the trunk's output on ``sample`` (eval mode: nothing changes)."""
    was_training = net.training
    net.eval()
    try:
        return int(net.trunk(sample).shape[1])
    finally:
        net.train(was_training)
