"""peerlearn.losses: the loss functions of every recipe, as a public functional API.

These are the functions the recipes call; use them in your own training loop (docs/own-loop.md) or under
Lightning (``peerlearn.lightning``). Conventions: logits are [N, C] (N items, C classes); probabilities
come from a softmax at temperature T, p = softmax(z / T); values are batch means; targets that come from
another network (a peer, a teacher) are detached inside the functions; labels are int64 with −1 for an
unlabelled item.

=========================  ======================================================================
DML (mimicry)              ``mutual_learning_losses``, ``mutual_mimicry``, ``stacked_mutual_mimicry``,
                           ``kl_to_target``, ``js_to_target``, ``soft_probs``, ``feature_l2``,
                           ``stacked_feature_l2``, ``mean_kl_from_peers``
distillation               ``distillation_loss``, ``distillation_terms``, ``teacher_probs``,
                           ``soft_targets``, ``soft_target_loss``, ``logit_matching``
classification             ``cross_entropy``, ``entropy``
regularisers               ``center_loss``, ``update_centers``, ``CenterLoss`` (module with its centres),
                           ``l1_penalty``, ``l2_penalty``
domain alignment           ``coral_loss``, ``mmd_loss``, ``covariance``, ``median_bandwidths``, ``rbf_kernel``
online distillation        ONE ``one_loss``, ``gated_ensemble``; CL-ILR ``cl_ilr_loss``, ``cl_ilr_targets``;
(docs/online.md)           OKDDip ``okddip_loss``, ``okddip_targets``, ``peer_attention``; KDCL ``kdcl_loss``,
                           ``min_logit_teacher``, ``linear_teacher``, ``linear_teacher_weights``,
                           ``generalization_weights``, ``weighted_teacher``; PCL ``pcl_loss``,
                           ``peer_mean_kl``; ``OnlineLoss`` (loss, parts)
temporal means             ``ema_update``, ``ema_decay``, ``sigmoid_rampup``
feature distillation       ``hint_loss``, ``HintRegressor`` (FitNets), ``attention_map``,
                           ``attention_transfer_loss`` (AT)
relational distillation    ``similarity_preserving_loss``, ``similarity_matrix`` (SP), ``rkd_loss``,
                           ``rkd_distance_loss``, ``rkd_angle_loss`` (RKD), ``pkt_loss`` (PKT)
contrastive distillation   ``CRDLoss`` (module with its heads and memory banks), ``EmbeddingHead``,
                           ``nce_critic_loss`` (CRD)
logit relations            ``dkd_loss``, ``dkd_terms``, ``dkd_warmup`` (DKD), ``dist_loss``,
                           ``dist_terms``, ``pearson_correlation`` (DIST)
=========================  ======================================================================

The feature and relational losses take the student's and the teacher's features of the same batch and
return the unweighted term; ``FEATURE_LOSS_WEIGHTS`` lists the weight each paper (or, where the paper gives
none, the authors' code) puts on it. docs/distillation.md ("Feature and relational losses") gives every
formula and where the papers and their code differ.
"""

from peerlearn.losses.alignment import (ALIGNMENT_LOSSES, coral_loss, covariance, median_bandwidths, mmd_loss,
                                        rbf_kernel)
from peerlearn.losses.attention import attention_map, attention_transfer_loss
from peerlearn.losses.classification import cross_entropy, entropy
from peerlearn.losses.contrastive import CRDLoss, EmbeddingHead, nce_critic_loss
from peerlearn.losses.correlation import DISTTerms, dist_loss, dist_terms, pearson_correlation
from peerlearn.losses.decoupled import DKDTerms, dkd_loss, dkd_terms, dkd_warmup
from peerlearn.losses.distillation import (DistillationTerms, distillation_loss, distillation_terms, logit_matching,
                                           soft_target_loss, soft_targets, teacher_probs)
from peerlearn.losses.hints import HintRegressor, hint_loss
from peerlearn.losses.mimicry import (feature_l2, js_to_target, kl_to_target, mean_kl_from_peers,
                                      mutual_learning_losses, mutual_mimicry, soft_probs, stacked_feature_l2,
                                      stacked_mutual_mimicry)
from peerlearn.losses.kdcl import (generalization_weights, kdcl_loss, linear_teacher, linear_teacher_weights,
                                   min_logit_teacher, weighted_teacher)
from peerlearn.losses.online import (cl_ilr_loss, cl_ilr_targets, gated_ensemble, okddip_loss, okddip_targets,
                                     one_loss, peer_attention)
from peerlearn.losses.online_base import OnlineLoss
from peerlearn.losses.pcl import pcl_loss, peer_mean_kl
from peerlearn.losses.regularizers import CenterLoss, center_loss, l1_penalty, l2_penalty, update_centers
from peerlearn.losses.temporal import ema_decay, ema_update, sigmoid_rampup
from peerlearn.losses.relational import (pkt_loss, rkd_angle_loss, rkd_distance_loss, rkd_loss, similarity_matrix,
                                         similarity_preserving_loss)

FEATURE_LOSS_WEIGHTS = {
    "fitnets": 100.0,  # RepDistiller, with reduction="mean"; the paper trains the hint stage on the hint loss alone
    "at": 500.0,       # the paper's β/2 with β = 10³ (RepDistiller: 1000)
    "sp": 3000.0,      # the paper's γ (CIFAR-10)
    "rkd": 1.0,        # the weights 25 (distance) and 50 (angle) are rkd_loss's own defaults
    "pkt": 30000.0,    # RepDistiller, for variant="code" (the paper states no weight)
    "crd": 0.8,        # the paper's β, chosen with the authors' critic (CRDLoss variant="code")
    "dkd": 1.0,        # α = 1, β = 8, T = 4 are dkd_loss's defaults, ramped in by dkd_warmup
    "dist": 1.0,       # β = γ = 1, τ = 1 are dist_loss's defaults
}
"""The weight of each method's loss next to the cross-entropy (weight 1), from its paper or authors' code."""

__all__ = [
    # DML
    "mutual_learning_losses", "mutual_mimicry", "stacked_mutual_mimicry", "kl_to_target", "js_to_target",
    "soft_probs", "feature_l2", "stacked_feature_l2", "mean_kl_from_peers",
    # distillation
    "distillation_loss", "distillation_terms", "DistillationTerms", "teacher_probs", "soft_targets",
    "soft_target_loss", "logit_matching",
    # classification
    "cross_entropy", "entropy",
    # regularisers
    "CenterLoss", "center_loss", "update_centers", "l1_penalty", "l2_penalty",
    # domain alignment
    "coral_loss", "mmd_loss", "covariance", "median_bandwidths", "rbf_kernel", "ALIGNMENT_LOSSES",
    # online distillation
    "OnlineLoss", "one_loss", "gated_ensemble", "cl_ilr_loss", "cl_ilr_targets", "okddip_loss", "okddip_targets",
    "peer_attention", "kdcl_loss", "min_logit_teacher", "linear_teacher", "linear_teacher_weights",
    "generalization_weights", "weighted_teacher", "pcl_loss", "peer_mean_kl",
    # temporal means
    "ema_update", "ema_decay", "sigmoid_rampup",
    # feature, relational and contrastive distillation
    "hint_loss", "HintRegressor", "attention_map", "attention_transfer_loss", "similarity_preserving_loss",
    "similarity_matrix", "rkd_loss", "rkd_distance_loss", "rkd_angle_loss", "pkt_loss", "CRDLoss", "EmbeddingHead",
    "nce_critic_loss", "FEATURE_LOSS_WEIGHTS",
    # logit relations
    "dkd_loss", "dkd_terms", "DKDTerms", "dkd_warmup", "dist_loss", "dist_terms", "DISTTerms", "pearson_correlation",
]
