"""Loss terms of every recipe, written from the papers' formulas.

Conventions: ``logits`` are [N, C]; probabilities come from a softmax at temperature T,
p = softmax(z / T). Divergences are averaged over the batch ("batchmean"). Targets that come from
another network (a peer, a teacher) are detached inside these functions, so that no gradient can
flow into the network that produced them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(softmax(z), y) averaged over labelled items; items with label -1 are ignored.

    Returns 0 (with a graph) when the batch has no labelled item.
    """
    labelled = labels >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=label_smoothing)


def kl_to_target(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_target ‖ p) = Σ_m p_target,m · log(p_target,m / p_m), with p = softmax(z / T), batch mean.

    ``target_probs`` is treated as a constant (detached). Terms with p_target,m = 0 contribute 0.
    """
    target = target_probs.detach()
    log_p = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_p, target, reduction="batchmean")


def js_to_target(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Jensen–Shannon divergence JS(p_target, p) = ½ KL(p_target ‖ m) + ½ KL(p ‖ m), m = ½(p_target + p).

    Symmetric mimicry; the target is constant, the gradient flows through p (also inside m).
    """
    target = target_probs.detach()
    log_p = F.log_softmax(logits / temperature, dim=1)
    p = log_p.exp()
    log_m = torch.log((target + p) / 2).clamp_min(-1e4)
    kl_target_m = (torch.xlogy(target, target) - target * log_m).sum(1)
    kl_p_m = (p * (log_p - log_m)).sum(1)
    return 0.5 * (kl_target_m + kl_p_m).mean()


def soft_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """q_i = exp(z_i / T) / Σ_j exp(z_j / T), detached (a target)."""
    return F.softmax(logits.detach() / temperature, dim=1)


def mutual_mimicry(
    logits: torch.Tensor,
    peer_probs: Sequence[torch.Tensor],
    temperature: float = 1.0,
    divergence: str = "kl",
    teacher: str = "peers",
) -> torch.Tensor:
    """The DML mimicry term of one member k against its K−1 peers' probabilities (at T).

    teacher="peers"     : 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)            (DML, Zhang et al. eq. 9/10)
    teacher="ensemble"  : D(p̄ ‖ p_k),  p̄ = 1/(K−1) · Σ_{l≠k} p_l    (DML_e)
    D is KL or JS. When T ≠ 1 the term is multiplied by T² (Hinton et al.) so that its gradient
    scale does not shrink with T.
    """
    if not peer_probs or logits.shape[0] == 0:  # no peer, or no item (e.g. a batch without labels)
        return logits.sum() * 0.0
    divergence_fn = {"kl": kl_to_target, "js": js_to_target}[divergence]
    if teacher == "ensemble":
        mean_probs = torch.stack([p.detach() for p in peer_probs]).mean(0)
        term = divergence_fn(mean_probs, logits, temperature)
    elif teacher == "peers" and divergence == "kl":
        term = mean_kl_from_peers(peer_probs, logits, temperature)
    elif teacher == "peers":
        term = sum(divergence_fn(p, logits, temperature) for p in peer_probs) / len(peer_probs)
    else:
        raise ValueError(f"teacher must be 'peers' or 'ensemble', got {teacher!r}")
    return term * temperature**2


def mean_kl_from_peers(peer_probs: Sequence[torch.Tensor], logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """1/(K−1) · Σ_l KL(p_l ‖ p_k) computed in one pass instead of K−1:

        1/(K−1) Σ_l Σ_m p_l,m log p_l,m  −  Σ_m p̄_m log p_k,m,     p̄ = 1/(K−1) Σ_l p_l

    (batch mean). The first part is a constant of the peers; the second is a single cross-entropy with
    their mean, so the cost no longer grows with the number of peers. Equal to the plain sum up to rounding.
    """
    peers = torch.stack([p.detach() for p in peer_probs])  # [K−1, B, C]
    neg_entropy = torch.xlogy(peers, peers).sum(-1).mean()
    log_p = F.log_softmax(logits / temperature, dim=1)
    return neg_entropy - (peers.mean(0) * log_p).sum(1).mean()


def feature_l2(features: torch.Tensor, peer_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over peers of the squared L2 distance between penultimate features, batch mean:
    1/(K−1) Σ_{l≠k} mean_n ‖f_k(x_n) − f_l(x_n)‖²; peers' features are constant targets.
    """
    if not peer_features:
        return features.sum() * 0.0
    total = sum(((features - f.detach()) ** 2).sum(1).mean() for f in peer_features)
    return total / len(peer_features)


# ----------------------------------------------------------------- stacked (fused cohort) forms
def _pairwise_divergence(target: torch.Tensor, log_p: torch.Tensor, divergence: str) -> torch.Tensor:
    """D(t ‖ p) batch-mean over N for broadcastable [..., N, C] targets and log-probabilities."""
    if divergence == "kl":
        return (torch.xlogy(target, target) - target * log_p).sum(-1).mean(-1)
    if divergence == "js":
        p = log_p.exp()
        log_m = torch.log((target + p) / 2).clamp_min(-1e4)
        kl_target_m = (torch.xlogy(target, target) - target * log_m).sum(-1)
        kl_p_m = (p * (log_p - log_m)).sum(-1)
        return 0.5 * (kl_target_m + kl_p_m).mean(-1)
    raise ValueError(f"divergence must be 'kl' or 'js', got {divergence!r}")


def stacked_mutual_mimicry(logits: torch.Tensor, temperature: float = 1.0, divergence: str = "kl",
                           teacher: str = "peers") -> torch.Tensor:
    """The DML mimicry term of every member at once, from stacked logits [K, N, C]; returns [K].

    With p_k = softmax(z_k / T) and the targets p_l detached:
    peers:    m_k = T² · 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)       (all K·K pairs, diagonal dropped)
    ensemble: m_k = T² · D(p̄_k ‖ p_k),  p̄_k = (Σ_l p_l − p_k) / (K−1)
    Equal to ``mutual_mimicry(logits[k], [p_l for l ≠ k])`` for each k.
    """
    count = logits.shape[0]
    if count < 2 or logits.shape[1] == 0:  # one member, or no item (e.g. a batch without labels)
        return logits.sum(dim=(1, 2)) * 0.0
    log_p = F.log_softmax(logits / temperature, dim=-1)
    target = F.softmax(logits.detach() / temperature, dim=-1)
    if teacher == "ensemble":
        mean_others = (target.sum(0, keepdim=True) - target) / (count - 1)
        term = _pairwise_divergence(mean_others, log_p, divergence)
    elif teacher == "peers":
        pairs = _pairwise_divergence(target.unsqueeze(1), log_p.unsqueeze(0), divergence)  # [l, k]
        off_diagonal = 1.0 - torch.eye(count, dtype=pairs.dtype, device=pairs.device)
        term = (pairs * off_diagonal).sum(0) / (count - 1)
    else:
        raise ValueError(f"teacher must be 'peers' or 'ensemble', got {teacher!r}")
    return term * temperature**2


def stacked_feature_l2(features: torch.Tensor) -> torch.Tensor:
    """``feature_l2`` of every member at once from stacked features [K, N, D]; returns [K]:
    1/(K−1) Σ_{l≠k} mean_n ‖f_k(x_n) − f_l(x_n)‖², the peers' features constant."""
    count = features.shape[0]
    if count < 2:
        return features.sum(dim=(1, 2)) * 0.0
    pairs = ((features.unsqueeze(0) - features.detach().unsqueeze(1)) ** 2).sum(-1).mean(-1)  # [l, k]
    off_diagonal = 1.0 - torch.eye(count, dtype=pairs.dtype, device=pairs.device)
    return (pairs * off_diagonal).sum(0) / (count - 1)


def teacher_probs(teacher_logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Soft targets of one or several teachers: q = 1/M · Σ_m softmax(v_m / T) (detached).

    Several teachers are combined by averaging their probabilities at T (Hinton et al.'s ensemble).
    """
    if not teacher_logits:
        raise ValueError("teacher_probs needs at least one teacher's logits")
    return torch.stack([soft_probs(v, temperature) for v in teacher_logits]).mean(0)


def soft_target_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(q_teacher,T ‖ softmax(z / T)), batch mean.

    The gradient with respect to the student's logits is T · (softmax(z / T) − q_teacher,T) / N: the T²
    factor keeps its size comparable to that of the hard-label CE whatever T is.
    """
    return kl_to_target(target_probs, student_logits, temperature) * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: Optional[torch.Tensor],
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. 2015: α · CE(student, y) + (1 − α) · T² · KL(q_teacher,T ‖ q_student,T).

    ``teacher_probs`` are the teachers' probabilities at T (see ``teacher_probs``; several teachers
    averaged). KL and the soft cross-entropy CE(q_teacher,T, q_student,T) differ by the teacher's
    entropy, a constant, so their gradients are equal. With α = 0 no label is needed (``labels`` may
    be None); with α > 0 labels are required, and items labelled −1 are left out of the CE term.
    """
    soft = soft_target_loss(student_logits, teacher_probs, temperature)
    if alpha == 0:
        return soft
    if labels is None:
        raise ValueError("distillation_loss with alpha > 0 needs labels (use alpha = 0 on unlabelled data)")
    return alpha * cross_entropy(student_logits, labels) + (1 - alpha) * soft


def logit_matching(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Caruana / Ba & Caruana: ½ · Σ_i (z_i − v_i)², summed over classes, averaged over the batch.

    The high-temperature limit of distillation: for zero-mean logits, the gradient of T²·KL tends to
    (z − v) / C as T → ∞ (C classes), i.e. 1/C times the gradient of this loss.
    """
    return 0.5 * ((student_logits - teacher_logits.detach()) ** 2).sum(1).mean()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_m p_m log p_m for each row (nats)."""
    return -torch.xlogy(probs, probs).sum(1)


# --------------------------------------------------------------------------- regularisers
def l1_penalty(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_w Σ_j |w_j| over the given weight tensors (multiply by λ₁ outside)."""
    return sum(w.abs().sum() for w in weights)


def l2_penalty(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """½ Σ_w Σ_j w_j² over the given weight tensors (multiply by λ₂ outside; gradient λ₂·w)."""
    return 0.5 * sum((w**2).sum() for w in weights)


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Centre loss (Wen, Zhang, Li, Qiao, ECCV 2016), averaged over the labelled items of the batch:

        L_C = 1/(2m) · Σ_i ‖f_i − c_{y_i}‖²

    The paper sums over the mini-batch (½ Σ_i) and sums its softmax loss too; here both the CE and this
    term are batch means, so the weight λ has the paper's meaning. The centres are constants here (they
    move by ``update_centers``), so the gradient is ∂L_C/∂f_i = (f_i − c_{y_i}) / m. Items with label −1
    are ignored; a batch without labels gives 0.
    """
    labelled = labels >= 0
    if not bool(labelled.any()):
        return features.sum() * 0.0
    diff = features[labelled] - centers.detach()[labels[labelled]]
    return 0.5 * (diff**2).sum(1).mean()


@torch.no_grad()
def update_centers(centers: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
    """The centre update of Wen et al. (eq. 4), in place, for the classes present in the batch:

        Δc_j = Σ_i δ(y_i = j)(c_j − f_i) / (1 + Σ_i δ(y_i = j)),    c_j ← c_j − α · Δc_j
    """
    labelled = labels >= 0
    feats, ys = features.detach()[labelled].to(centers.dtype), labels[labelled]
    if len(ys) == 0:
        return
    counts = torch.bincount(ys, minlength=centers.shape[0]).to(centers.dtype)
    sums = torch.zeros_like(centers).index_add_(0, ys, feats)
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    centers.sub_(alpha * delta)
