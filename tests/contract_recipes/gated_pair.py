"""A recipe written outside peerlearn with an auxiliary module: a gate weights the members' logits into a
teacher, z_e = Σ_k g_k(x) z_k (ONE's gated ensemble, on separate networks). Loss of member k:
CE(z_k, y) + KL(softmax(z_e) ‖ softmax(z_k)), the teacher constant; the gate learns from CE(z_e, y)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.recipes.base import Recipe


class Gate(nn.Module):
    """g(x) = softmax(W · mean over space of x + b): one weight per member, for each input."""

    def __init__(self, in_channels: int, members: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.linear(x.flatten(2).mean(-1)), dim=-1)


class GatedEnsemble(nn.Module):
    """The gate's predictions z_e(x): evaluated, reported and exported as the row of the auxiliary."""

    def __init__(self, members: list[nn.Module], gate: Gate):
        super().__init__()
        self.members, self.gate = nn.ModuleList(members), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members], dim=1)  # [B, K, C]
        return (self.gate(x).unsqueeze(-1) * logits).sum(1)


class GatedPairRecipe(Recipe):
    name = "gated_pair"

    def build_cohort(self):
        cohort = super().build_cohort()
        names = [m.name for m in cohort.trainable]
        spec = {"in_channels": self.data.input_shape[0], "members": names}
        gate = self.build_auxiliary("gate", spec)
        self.add_auxiliary("gate", gate, spec, predictor=GatedEnsemble([cohort[n].model for n in names], gate))
        return cohort

    @classmethod
    def build_auxiliary(cls, name, spec):
        return Gate(spec["in_channels"], len(spec["members"]))

    @classmethod
    def build_predictor(cls, name, spec, modules):
        return GatedEnsemble([modules[n] for n in spec["members"]], modules[name])

    def losses(self, out, batch, names):
        gate = self.cohort["gate"].model
        teacher = (gate(batch.x).unsqueeze(-1) * torch.stack([out.logits[n] for n in names], 1)).sum(1)
        target = F.softmax(teacher.detach(), dim=-1)
        result = {}
        for name in names:
            ce = F.cross_entropy(out.logits[name], batch.y)
            kl = F.kl_div(F.log_softmax(out.logits[name], dim=-1), target, reduction="batchmean")
            result[name] = (ce + kl, {"ce": ce.detach(), "kl": kl.detach()})
        ce_teacher = F.cross_entropy(teacher, batch.y)
        result["gate"] = (ce_teacher, {"ce": ce_teacher.detach()})
        return result
