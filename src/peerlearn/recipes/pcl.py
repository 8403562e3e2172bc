"""PCL — peer collaborative learning for online knowledge distillation (Wu & Gong, AAAI 2021).

K branches ("peers") on a shared trunk, each fed its own augmented view of the batch (branch k reads view k), and
two teachers built from them:

    peer ensemble teacher   z_e = FC([h_1; …; h_K]), a classifier on the branches' concatenated features
                            (``PeerEnsembleClassifier``), trained by CE and distilled into every branch;
    peer mean teacher       the temporal mean θ' ← δ θ' + (1 − δ) θ of the whole network (``ema_update``, δ = 0.999
                            with the mean teacher's warm-up min(δ, 1 − 1/(step + 1))); its branch logits z'_k on the
                            same views teach the peers.

    L = Σ_k CE(z_k, y) + CE(z_e, y) + α · T² · Σ_k KL(σ(z_e/T) ‖ σ(z_k/T)) + β · T² · Σ_k D_k,
    D_k = 1/(K−1) · Σ_{l≠k} KL(σ(z'_l/T) ‖ σ(z_k/T))                                  (``losses.pcl_loss``)

with z_e constant in its KL terms and the temporal mean never trained by gradient (a non-trainable auxiliary
updated after every optimiser step, ``after_update``). The temporal mean predicts in evaluation mode, without
gradient, with BatchNorm statistics copied from the network at each update (as weight-averaging teachers commonly
do; the paper does not say).

Deployed: a temporal-mean branch (``mean0``: trunk + branch 0 of the averaged network). Cohort: the network
``net``; views ``net0 … net{K−1}`` (the trained branches) and ``mean0 … mean{K−1}`` (the temporal-mean branches,
the ensemble); auxiliaries ``peer_ensemble`` (its row: the peer ensemble teacher's predictions) and ``ema``.
Defaults: K = 3, T = 3, α = β = 1, δ = 0.999; β's ramp-up (``pcl.rampup_epochs``) is off by default: the paper ramps
the peer-mean term up, the length is the user's choice here.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from peerlearn.config import Section
from peerlearn.losses import ema_decay, ema_update, pcl_loss
from peerlearn.memory_format import flatten_batches
from peerlearn.models.online_parts import PeerEnsembleClassifier
from peerlearn.recipes.online_base import BranchRecipe, multibranch_record

EMA = "ema"
PEER_ENSEMBLE = "peer_ensemble"


class PclConfig(Section):
    """PCL: L = Σ_k CE(z_k) + CE(z_e) + α·T²·Σ_k KL(σ(z_e/T) ‖ σ(z_k/T)) + β·T²·Σ_k D_k (peer mean teacher)."""

    branches: int = Field(3, ge=2, le=32, description="K, peers (branches) on the shared trunk")
    temperature: float = Field(3.0, gt=0, description="T of the KL terms")
    ensemble_weight: float = Field(1.0, ge=0, description="α, weight of the peer ensemble teacher's KL terms")
    mean_weight: float = Field(1.0, ge=0, description="β, weight of the peer mean teacher's KL terms")
    rampup_epochs: float = Field(0.0, ge=0, description="β times sigmoid_rampup(epoch, this) (0: constant)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="δ of the temporal mean (warm-up min(δ, 1 − 1/(t+1)))")
    peers: Literal["others", "self"] = Field("others", description="each peer learns from the other peers' temporal "
                                                                   "means, or from its own")


class PeerEnsembleNet(nn.Module):
    """The peer ensemble teacher's logits for an input: every branch on it, the classifier on their features."""

    def __init__(self, net: nn.Module, classifier: PeerEnsembleClassifier):
        super().__init__()
        self.net, self.classifier = net, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.net(x).features)


class PclRecipe(BranchRecipe):
    name = "pcl"
    section = "pcl"
    section_model = PclConfig
    own_views = True

    @classmethod
    def branch_rows(cls, config) -> list[str]:
        net = config.members[0].name
        return [f"{net}{k}" for k in range(config.pcl.branches)]

    @classmethod
    def ensemble_rows(cls, config) -> list[str]:
        return [f"mean{k}" for k in range(config.pcl.branches)]

    @classmethod
    def evaluated_rows(cls, config) -> list[str]:
        return cls.branch_rows(config) + cls.ensemble_rows(config) + [PEER_ENSEMBLE]

    @classmethod
    def deployed_row(cls, config) -> str:
        return "mean0"

    def declare_parts(self, owner) -> None:
        net = owner.network
        self.add_branches(owner.name, net, self.branch_rows(self.config))
        spec = {"feature_dim": net.feature_dim, "branches": net.num_branches, "num_classes": self.data.num_classes,
                "of": owner.name}
        classifier = self.build_auxiliary(PEER_ENSEMBLE, spec).to(self.device)
        self.add_auxiliary(PEER_ENSEMBLE, classifier, spec, predictor=PeerEnsembleNet(net, classifier))
        average = copy.deepcopy(net)
        self.add_auxiliary(EMA, average, {"network": self.network_record(owner)}, trainable=False)
        self.add_branches(EMA, average, self.ensemble_rows(self.config))

    @classmethod
    def build_auxiliary(cls, name: str, spec: dict[str, Any]) -> nn.Module:
        if name == EMA:  # the temporal mean is a copy of the multi-branch network
            from peerlearn.models.multibranch import from_record

            return from_record(spec["network"])
        return PeerEnsembleClassifier(int(spec["feature_dim"]), int(spec["branches"]), int(spec["num_classes"]))

    @classmethod
    def build_predictor(cls, name: str, spec: dict[str, Any], modules: dict[str, nn.Module]) -> nn.Module:
        return PeerEnsembleNet(modules[spec["of"]], modules[name])

    def network_forward(self, member, x, with_features):
        self.views = x  # [K, B, ...]: the temporal mean reads the same views
        return super().network_forward(member, x, with_features)

    @torch.no_grad()
    def mean_logits(self) -> torch.Tensor:
        """The temporal-mean network's branch logits [K, B, C], branch k on view k (evaluation mode, no gradient).

        In evaluation mode nothing depends on the batch, so the trunk reads the K views as one batch of K·B items
        (one pass instead of K) and branch k reads its view's rows: the same logits as ``branch(k)(view k)``."""
        average = self.cohort[EMA].model
        count, batch = self.views.shape[0], self.views.shape[1]
        with self.autocast():
            shared = average.trunk(flatten_batches(self.views)).unflatten(0, (count, batch))
            return torch.stack([average.branches[k](shared[k]) for k in range(count)]).float()

    def losses(self, out, batch, names):
        """``pcl_loss`` of the branches' logits, the peer ensemble classifier on their features (stepped with them)
        and the temporal mean's logits."""
        (name,) = names
        settings = self.settings
        ensemble = self.cohort[PEER_ENSEMBLE].model(out.features[name])
        weight = settings.mean_weight * self.rampup(settings.rampup_epochs)
        result = pcl_loss(out.logits[name], ensemble, self.mean_logits(), batch.y, settings.temperature,
                          settings.ensemble_weight, weight, settings.peers)
        return {name: (result.loss, {key: value.detach() for key, value in result.parts.items()})}

    def after_update(self) -> None:
        """θ' ← δ_t θ' + (1 − δ_t) θ after every step, δ_t = min(δ, 1 − 1/(t + 1)) at global step t."""
        step = self.trainer.position.global_step if self.trainer is not None else 0
        ema_update(self.cohort[EMA].model, self.owner.network, ema_decay(step, self.settings.ema_decay))
