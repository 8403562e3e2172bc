"""OKDDip — online knowledge distillation with diverse peers (Chen, Mei, Wang, Feng & Chen, AAAI 2020).

A multi-branch network with K auxiliary peers and one group leader (K + 1 branches on a shared trunk). Two
learned linear maps L, E of the peers' pooled features h give attention weights; each peer distils from an
attention-weighted mixture of the peers' logits, the leader from the peers' mean (``losses.okddip_loss``):

    a_ij = softmax_j( L(h_i) · E(h_j) )          (the peer itself left out, as the paper's text says)
    t_i  = Σ_j a_ij z_j,         t_L = (1/K) Σ_j z_j
    L    = Σ_i CE(z_i, y) + CE(z_L, y) + λ · T² · [ Σ_i KL(σ(t_i/T) ‖ σ(z_i/T)) + KL(σ(t_L/T) ‖ σ(z_L/T)) ]

The targets keep their graph (``okddip.detach: none``, the authors' code): the projections learn through t_i.
Deployed: the leader (``leader``, trunk + branch K). Cohort: the network ``net``; views ``net0 … net{K−1}`` (the
peers) and ``leader``; the auxiliary ``attention`` (a ``PeerAttention``, no row of its own). Ensemble: the peers
and the leader. Defaults: K = 3 peers, T = 3 and the projections' reduction 8 (the authors' code), λ = 1 (the
paper; the code ramps it up: ``okddip.rampup_epochs``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import nn

from peerlearn.config import Section
from peerlearn.losses import okddip_loss
from peerlearn.models.online_parts import PeerAttention
from peerlearn.recipes.online_base import BranchRecipe

LEADER = "leader"


class OkddipConfig(Section):
    """OKDDip: L = Σ_i CE(z_i) + CE(z_L) + λ·T²·[Σ_i KL(σ(t_i/T) ‖ σ(z_i/T)) + KL(σ(t_L/T) ‖ σ(z_L/T))]."""

    peers: int = Field(3, ge=2, le=32, description="K, auxiliary peers (the network has K + 1 branches)")
    temperature: float = Field(3.0, gt=0, description="T of the KL terms (the authors' code: 3)")
    distill_weight: float = Field(1.0, ge=0, description="λ, weight of the KL terms (the paper: 1)")
    rampup_epochs: float = Field(0.0, ge=0, description="λ times sigmoid_rampup(epoch, this) (0: constant)")
    detach: Literal["none", "logits", "all"] = Field(
        "none", description="what is constant in the targets: none (the code), the peers' logits, or all (then the "
                            "projections never learn)")
    include_self: bool = Field(False, description="a peer in its own mixture (the authors' code) or not (the paper)")
    factor: int = Field(8, ge=1, description="the projections map D features to D / factor")


class OkddipRecipe(BranchRecipe):
    name = "okddip"
    section = "okddip"
    section_model = OkddipConfig

    @classmethod
    def branch_count(cls, settings) -> int:
        return settings.peers + 1

    @classmethod
    def peer_rows(cls, config) -> list[str]:
        net = config.members[0].name
        return [f"{net}{k}" for k in range(config.okddip.peers)]

    @classmethod
    def evaluated_rows(cls, config) -> list[str]:
        return cls.peer_rows(config) + [LEADER]

    @classmethod
    def ensemble_rows(cls, config) -> list[str]:
        return cls.evaluated_rows(config)

    @classmethod
    def deployed_row(cls, config) -> str:
        return LEADER

    def declare_parts(self, owner) -> None:
        net = owner.network
        self.add_branches(owner.name, net, self.evaluated_rows(self.config))
        spec = {"feature_dim": net.feature_dim, "factor": self.settings.factor,
                "include_self": self.settings.include_self}
        self.add_auxiliary("attention", self.build_auxiliary("attention", spec), spec)

    @classmethod
    def build_auxiliary(cls, name: str, spec: dict[str, Any]) -> nn.Module:
        return PeerAttention(int(spec["feature_dim"]), int(spec["factor"]), bool(spec["include_self"]))

    def losses(self, out, batch, names):
        """``okddip_loss``: branches 0 … K−1 are the peers, branch K the leader; the attention reads the peers'
        features of this step."""
        (name,) = names
        settings = self.settings
        logits, features = out.logits[name], out.features[name]
        peers = settings.peers
        attention = self.cohort["attention"].model(features[:peers])
        weight = settings.distill_weight * self.rampup(settings.rampup_epochs)
        result = okddip_loss(logits[:peers], logits[peers], attention, batch.y, settings.temperature, weight,
                             settings.detach)
        return {name: (result.loss, {key: value.detach() for key, value in result.parts.items()})}
