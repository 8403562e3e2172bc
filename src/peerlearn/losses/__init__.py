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
=========================  ======================================================================
"""

from peerlearn.losses.alignment import (ALIGNMENT_LOSSES, coral_loss, covariance, median_bandwidths, mmd_loss,
                                        rbf_kernel)
from peerlearn.losses.classification import cross_entropy, entropy
from peerlearn.losses.distillation import (DistillationTerms, distillation_loss, distillation_terms, logit_matching,
                                           soft_target_loss, soft_targets, teacher_probs)
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
]
