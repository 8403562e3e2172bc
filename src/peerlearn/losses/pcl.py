"""PCL (Wu & Gong, AAAI 2021, "Peer Collaborative Learning for Online Knowledge Distillation").

K branches ("peers") on a shared trunk, each fed its own random augmentation of the batch, and two teachers:

    peer ensemble teacher   a classifier on the concatenated features of the K branches
                            (``peerlearn.models.online_parts.PeerEnsembleClassifier``), logits z_e [B, C],
                            trained with CE and distilled into every branch;
    peer mean teacher       the temporal mean (an exponential moving average of the weights, decay 0.999,
                            ``ema_update``) of the network; its branch logits z'_k [K, B, C] teach the peers.

The deployed network is one temporal-mean branch (trunk + branch k of the averaged network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.losses.classification import cross_entropy
from peerlearn.losses.mimicry import at_temperature, soft_probs
from peerlearn.losses.online_base import (Logits, OnlineLoss, check_one_per_item, check_temperature, check_weight,
                                          kl_between_logits, stack_logits, summed_cross_entropy)

PEER_MEAN_SOURCES = ("others", "self")


def peer_mean_kl(branch_logits: Logits, mean_logits: Logits, temperature: float,
                 peers: str = "others") -> torch.Tensor:
    """The peer-mean-teacher term, T² · Σ_k D_k, the temporal-mean logits z'_l constant:

        peers="others" : D_k = 1/(K−1) · Σ_{l≠k} KL(p'_l ‖ p_k)   (each peer learns from the other peers'
                                                                   temporal means: knowledge moves among peers)
        peers="self"   : D_k = KL(p'_k ‖ p_k)                     (each peer from its own temporal mean)

    p = softmax(z / T). Shapes: ``branch_logits`` and ``mean_logits`` [K, B, C]; a scalar. "others" has the
    gradient of KL(mean_l p'_l ‖ p_k) (the two differ by a constant of the teachers).
    """
    check_temperature(temperature)
    if peers not in PEER_MEAN_SOURCES:
        raise ValueError(f"peers must be one of {PEER_MEAN_SOURCES}, got {peers!r}")
    logits = stack_logits(branch_logits, "branch_logits")
    means = stack_logits(mean_logits, "mean_logits")
    if means.shape != logits.shape:
        raise ValueError(f"mean_logits must have the branch logits' shape {list(logits.shape)}, "
                         f"got {list(means.shape)}")
    if peers == "self":
        return kl_between_logits(means, logits, temperature) * temperature**2
    count = logits.shape[0]
    if count < 2:
        raise ValueError("peer_mean_kl with peers='others' needs at least 2 branches")
    targets = soft_probs(means, temperature)  # [K, B, C], constant
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    # pairs[l, k] = KL(p'_l ‖ p_k), batch mean: every teacher against every branch, then the diagonal left out
    pairs = (torch.xlogy(targets, targets).unsqueeze(1) - targets.unsqueeze(1) * log_p.unsqueeze(0)).sum(-1).mean(-1)
    off_diagonal = 1.0 - torch.eye(count, dtype=pairs.dtype, device=pairs.device)
    return (pairs * off_diagonal).sum() / (count - 1) * temperature**2


def pcl_loss(branch_logits: Logits, ensemble_logits: torch.Tensor, mean_logits: Logits, labels: torch.Tensor,
             temperature: float, ensemble_weight: float = 1.0, mean_weight: float = 1.0,
             peers: str = "others") -> OnlineLoss:
    """PCL: L = Σ_k CE(z_k, y) + CE(z_e, y) + α · T² · Σ_k KL(p_e ‖ p_k) + β · T² · Σ_k D_k,

    p_e = softmax(z_e / T) a constant (the ensemble teacher teaches the peers, it learns from CE only); D_k
    the peer-mean term of ``peer_mean_kl`` (the temporal-mean logits are constants: that network is not
    trained by gradient). Shapes: ``branch_logits`` [K, B, C], ``ensemble_logits`` [B, C] (the peer ensemble
    classifier), ``mean_logits`` [K, B, C] (the temporal-mean network's branches, each on its branch's view),
    ``labels`` [B]. Parts: ``ce``, ``ce_ensemble``, ``kl_ensemble``, ``kl_mean`` (KL terms with T², before
    the weights). α = ``ensemble_weight``, β = ``mean_weight``: the paper ramps the peer-mean term up over
    the first epochs (pass ``sigmoid_rampup(epoch, length)`` as β); both are 1 otherwise.
    """
    check_temperature(temperature)
    check_weight("ensemble_weight", ensemble_weight)
    check_weight("mean_weight", mean_weight)
    logits = stack_logits(branch_logits, "branch_logits")
    check_one_per_item("ensemble_logits", ensemble_logits, logits)
    ce = summed_cross_entropy(logits, labels)
    ce_ensemble = cross_entropy(ensemble_logits, labels)
    kl_ensemble = kl_between_logits(ensemble_logits.unsqueeze(0).expand_as(logits), logits,
                                    temperature) * temperature**2
    kl_mean = peer_mean_kl(logits, mean_logits, temperature, peers)
    loss = ce + ce_ensemble + ensemble_weight * kl_ensemble + mean_weight * kl_mean
    return OnlineLoss(loss, {"ce": ce, "ce_ensemble": ce_ensemble, "kl_ensemble": kl_ensemble,
                             "kl_mean": kl_mean})
