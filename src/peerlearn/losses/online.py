"""Online distillation among branches on a shared trunk: ONE, CL-ILR and OKDDip.

All three train K classifier branches at once and let each branch learn from a teacher built from the
branches themselves; they differ in how the teacher is built and in what is constant:

    ONE     (Lan, Zhu & Gong, NeurIPS 2018)  a gate weights the branches' logits into a teacher z_e
    CL-ILR  (Song & Chai, NeurIPS 2018)      each head learns from the other heads' consensus
    OKDDip  (Chen et al., AAAI 2020)         each auxiliary peer learns from an attention-weighted mixture
                                             of the peers; a group leader learns from the peers' mean

Shapes: stacked branch logits [K, B, C]; labels [B] (−1 = unlabelled, left out of the cross-entropies);
every divergence is a batch mean and every sum over branches is a plain sum (the papers' Σ, not a mean).
The trainable pieces (ONE's gate, OKDDip's projections) are in ``peerlearn.models.online_parts``; the
shared-trunk networks in ``peerlearn.models.multibranch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.losses.classification import cross_entropy
from peerlearn.losses.online_base import (Logits, OnlineLoss, check_one_per_item, check_temperature, check_weight,
                                          kl_between_logits, kl_to_probs, stack_logits,
                                          summed_cross_entropy)
from peerlearn.models.online_parts import peer_attention  # noqa: F401  (exported here: OKDDip's weights)

CL_ILR_AVERAGES = ("logits", "probs")
OKDDIP_DETACH = ("none", "logits", "all")


# ----------------------------------------------------------------------------------------------- ONE


def gated_ensemble(branch_logits: Logits, gate: torch.Tensor) -> torch.Tensor:
    """ONE's teacher logits: z_e[b] = Σ_k g[b, k] · z_k[b]; [K, B, C] and [B, K] → [B, C].

    ``gate`` g is the gate's output, one weight per branch and item (a softmax over K: rows sum to 1).
    Nothing is detached: used in CE(z_e, y) the gradient reaches both the branches and the gate.
    """
    logits = stack_logits(branch_logits, "branch_logits")
    count, batch = logits.shape[0], logits.shape[1]
    if gate.dim() != 2 or tuple(gate.shape) != (batch, count):
        raise ValueError(f"gate must be [B, K] = [{batch}, {count}] for branch logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(gate.shape)}")
    return torch.einsum("bk,kbc->bc", gate, logits)


def one_loss(branch_logits: Logits, gate: torch.Tensor, labels: torch.Tensor, temperature: float = 3.0,
             kl_weight: float = 1.0) -> OnlineLoss:
    """ONE (Lan et al. 2018): L = Σ_k CE(z_k, y) + CE(z_e, y) + λ · T² · Σ_k KL(p_e ‖ p_k),

    with z_e = Σ_k g_k z_k (``gated_ensemble``), p_e = softmax(z_e / T) a constant target and
    p_k = softmax(z_k / T). Shapes: ``branch_logits`` [K, B, C] (or K tensors [B, C]), ``gate`` [B, K],
    ``labels`` [B]. Parts: ``ce`` (Σ_k CE), ``ce_ensemble``, ``kl`` (T² Σ_k KL, before λ).

    What gets which gradient: the teacher p_e is detached in the KL (the paper distils the ensemble into the
    branches, not the reverse; the authors' code takes ``.data``), so the gate learns from CE(z_e, y) alone
    and each branch from its CE, from CE(z_e, y) through its share of z_e, and from its own KL.
    λ (``kl_weight``) is 1 in the paper; the authors' code multiplies the KL by a sigmoid ramp-up over the
    first 80 epochs (``sigmoid_rampup``) — pass its value as λ to reproduce the code. The code uses T = 3.
    """
    check_temperature(temperature)
    check_weight("kl_weight", kl_weight)
    logits = stack_logits(branch_logits, "branch_logits")
    ensemble = gated_ensemble(logits, gate)
    ce = summed_cross_entropy(logits, labels)
    ce_ensemble = cross_entropy(ensemble, labels)
    kl = kl_between_logits(ensemble.unsqueeze(0).expand_as(logits), logits, temperature) * temperature**2
    return OnlineLoss(ce + ce_ensemble + kl_weight * kl, {"ce": ce, "ce_ensemble": ce_ensemble, "kl": kl})


# -------------------------------------------------------------------------------------------- CL-ILR


def cl_ilr_targets(head_logits: Logits, temperature: float, average: str = "logits",
                   detach: bool = True) -> torch.Tensor:
    """The soft target of each head from the H − 1 others; [H, B, C] → [H, B, C] probabilities, detached
    unless ``detach=False``.

        average="logits" : q_h = softmax( (1/(H−1)) Σ_{j≠h} z_j / T )     (Song & Chai, the consensus of
                                                                           the other heads' logits)
        average="probs"  : q_h = (1/(H−1)) Σ_{j≠h} softmax(z_j / T)       (the mean of their soft targets)
    """
    check_temperature(temperature)
    if average not in CL_ILR_AVERAGES:
        raise ValueError(f"average must be one of {CL_ILR_AVERAGES}, got {average!r}")
    logits = stack_logits(head_logits, "head_logits", min_count=2)
    logits = logits.detach() if detach else logits
    others = logits.shape[0] - 1
    if average == "logits":
        mean_others = (logits.sum(0, keepdim=True) - logits) / others
        return F.softmax(mean_others / temperature, dim=-1)
    probs = F.softmax(logits / temperature, dim=-1)
    return (probs.sum(0, keepdim=True) - probs) / others


def cl_ilr_loss(head_logits: Logits, labels: torch.Tensor, temperature: float, beta: float = 0.5,
                average: str = "logits", detach_targets: bool = True) -> OnlineLoss:
    """Collaborative learning (Song & Chai 2018): L = Σ_h [ (1 − β) · CE(z_h, y) + β · T² · KL(q_h ‖ p_h) ],

    q_h the consensus of the other heads (``cl_ilr_targets``, a constant), p_h = softmax(z_h / T).
    Shapes: ``head_logits`` [H, B, C] (H ≥ 2), ``labels`` [B]. Parts: ``ce`` = Σ_h CE and ``kl`` =
    T² Σ_h KL (before the weights). β weights the soft term; β = 0.5 weights both terms equally.
    The targets are constants: each head's gradient comes from its own loss only, the property the
    paper's backpropagation rescaling relies on. The intermediate-level representation sharing itself
    is not a loss: apply ``peerlearn.models.multibranch.scale_gradient(trunk_output, 1 / H)`` (or build the
    ``MultiBranchNet`` with ``trunk_grad_scale=1 / H``) so the shared layers receive the mean, not the sum,
    of the heads' gradients. The reimplementation in the OKDDip repository averages logits as here but lets
    the gradient flow into the targets: ``detach_targets=False`` reproduces it (same value, and each head
    is then also pulled through the other heads' targets).
    """
    check_temperature(temperature)
    check_weight("beta", beta, upper=1)
    logits = stack_logits(head_logits, "head_logits", min_count=2)
    targets = cl_ilr_targets(logits, temperature, average, detach=detach_targets)
    ce = summed_cross_entropy(logits, labels)
    if detach_targets:
        kl = kl_to_probs(targets, logits, temperature) * temperature**2
    else:
        log_p = F.log_softmax(logits / temperature, dim=-1)
        kl = (torch.xlogy(targets, targets) - targets * log_p).sum(-1).mean(-1).sum() * temperature**2
    return OnlineLoss((1 - beta) * ce + beta * kl, {"ce": ce, "kl": kl})


# -------------------------------------------------------------------------------------------- OKDDip


def okddip_targets(peer_logits: Logits, attention: torch.Tensor) -> torch.Tensor:
    """Each auxiliary peer's target logits t_i[b] = Σ_j a[b, i, j] · z_j[b]; [K, B, C] and [B, K, K] →
    [K, B, C]. Nothing detached here (see ``okddip_loss``'s ``detach``)."""
    logits = stack_logits(peer_logits, "peer_logits")
    count, batch = logits.shape[0], logits.shape[1]
    if tuple(attention.shape) != (batch, count, count):
        raise ValueError(f"attention must be [B, K, K] = [{batch}, {count}, {count}], got {tuple(attention.shape)}")
    return torch.einsum("bij,jbc->ibc", attention, logits)


def okddip_loss(peer_logits: Logits, leader_logits: torch.Tensor, attention: torch.Tensor,
                labels: torch.Tensor, temperature: float = 3.0, distill_weight: float = 1.0,
                detach: str = "none") -> OnlineLoss:
    """OKDDip (Chen et al. 2020), two-level distillation with K auxiliary peers and one group leader:

        L = Σ_i CE(z_i, y) + CE(z_L, y)
            + λ · T² · [ Σ_i KL(softmax(t_i / T) ‖ softmax(z_i / T))
                         + KL(softmax(t_L / T) ‖ softmax(z_L / T)) ]

    t_i = Σ_j a_ij z_j (``okddip_targets``, first level), t_L = (1/K) Σ_j z_j the peers' mean logits (second
    level). Shapes: ``peer_logits`` [K, B, C] (the auxiliary peers only), ``leader_logits`` [B, C],
    ``attention`` [B, K, K] (``peer_attention``), ``labels`` [B]. Parts: ``ce_peers``, ``ce_leader``,
    ``kl_peers``, ``kl_leader`` (the KL terms with T², before λ). The leader is the deployed network.

    ``detach`` chooses what is constant in the targets (the paper's equations mark no stop-gradient):
      "none"   every target keeps its graph, as in the authors' code: the attention projections and the
               peers learn through t_i, the peers through t_L as well;
      "logits" the peers' logits are constants inside t_i and t_L, the attention weights are not (the
               projections still learn, the peers are not pulled through their neighbours' targets);
      "all"    every target is a constant (then nothing trains the attention projections).
    λ (``distill_weight``) is 1 in the paper; the authors' code ramps it up (``sigmoid_rampup``) and uses T = 3.
    """
    check_temperature(temperature)
    check_weight("distill_weight", distill_weight)
    if detach not in OKDDIP_DETACH:
        raise ValueError(f"detach must be one of {OKDDIP_DETACH}, got {detach!r}")
    logits = stack_logits(peer_logits, "peer_logits")
    check_one_per_item("leader_logits", leader_logits, logits)
    source = logits.detach() if detach != "none" else logits
    weights = attention.detach() if detach == "all" else attention
    peer_targets = okddip_targets(source, weights)
    leader_target = source.mean(0)
    ce_peers = summed_cross_entropy(logits, labels)
    ce_leader = cross_entropy(leader_logits, labels)
    kl_peers = kl_between_logits(peer_targets, logits, temperature, detach_target=False) * temperature**2
    kl_leader = kl_between_logits(leader_target, leader_logits, temperature, detach_target=False) * temperature**2
    loss = ce_peers + ce_leader + distill_weight * (kl_peers + kl_leader)
    return OnlineLoss(loss, {"ce_peers": ce_peers, "ce_leader": ce_leader, "kl_peers": kl_peers,
                             "kl_leader": kl_leader})
