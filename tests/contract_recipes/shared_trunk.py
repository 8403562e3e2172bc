"""A recipe written outside peerlearn whose members are branches on a shared trunk: one network with K heads,
each head (with the trunk) a member evaluated, ensembled and exported on its own. Loss of the network:
Σ_k [CE(z_k, y) + KL(p̄_{−k} ‖ p_k)], p̄_{−k} the mean of the other heads' probabilities (constant);
the trunk's gradient is the sum of its branches'."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.recipes.base import Recipe


class Branch(nn.Module):
    """Trunk + one head: inputs → that head's logits (the weights are the network's, not copies)."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class TrunkNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, branches: int = 2, width: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(width, num_classes)) for _ in range(branches))

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:  # [K, B, C], one trunk pass
        shared = self.trunk(x)
        return torch.stack([head(shared) for head in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_logits(x).mean(0)

    def branch(self, k: int) -> Branch:
        return Branch(self.trunk, self.heads[k])


def trunk_net(num_classes: int, in_channels: int, branches: int = 2, width: int = 8) -> TrunkNet:
    return TrunkNet(num_classes, in_channels, branches, width)


class SharedTrunkRecipe(Recipe):
    name = "shared_trunk"

    def build_cohort(self):
        cohort = super().build_cohort()
        (net,) = cohort.trainable
        self.branches = [self.add_view(f"{net.name}{k}", net.network.branch(k), of=net.name, spec={"branch": k}).name
                         for k in range(len(net.network.heads))]
        return cohort

    def stages(self):
        (stage,) = super().stages()
        stage.ensemble_members = self.branches
        return [stage]

    def network_forward(self, member, x, with_features):
        return member.network.all_logits(x), None

    def losses(self, out, batch, names):
        (name,) = names
        logits = out.logits[name]
        probs = F.softmax(logits.detach(), dim=-1)
        ce = sum(F.cross_entropy(z, batch.y) for z in logits)
        peers = (probs.sum(0, keepdim=True) - probs) / (len(logits) - 1)
        kl = sum(F.kl_div(F.log_softmax(z, dim=-1), t, reduction="batchmean") for z, t in zip(logits, peers))
        return {name: (ce + kl, {"ce": ce.detach(), "kl": kl.detach()})}
