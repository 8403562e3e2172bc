"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018): each member mimics its peers.

Conventions: ``logits`` are [N, C]; probabilities come from a softmax at temperature T, p = softmax(z / T).
Divergences are averaged over the batch ("batchmean"). Targets that come from another network (a peer) are
detached inside these functions, so no gradient can reach the network that produced them: summing every
member's loss and calling ``backward`` once is the simultaneous DML update.

Everything is computed from log-probabilities (``log_softmax``, ``logaddexp``), so the values and gradients
stay finite when the probabilities saturate (logit gaps of thousands).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from peerlearn.losses.checks import (check_all_same_shape, check_choice, check_labels, check_matrix,
                                     check_nonnegative, check_positive, check_same_shape)
from peerlearn.losses.classification import cross_entropy

DIVERGENCES = ("kl", "js")
TEACHERS = ("peers", "ensemble")


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z / T; at T = 1 the logits themselves (dividing by 1 is exact: one operation fewer per step)."""
    return logits if temperature == 1 else logits / temperature


def soft_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """q_i = exp(z_i / T) / Σ_j exp(z_j / T), detached (a target). [N, C] → [N, C]."""
    check_positive(temperature)
    return F.softmax(at_temperature(logits.detach(), temperature), dim=-1)


def _kl_rows(target: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(t ‖ p) = Σ_m t_m (log t_m − log p_m) over the last dimension; terms with t_m = 0 give 0."""
    return (torch.xlogy(target, target) - target * log_p).sum(-1)


def _js_rows(target: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """JS(t, p) = ½ KL(t ‖ m) + ½ KL(p ‖ m), m = ½(t + p), over the last dimension.

    log m = logaddexp(log t, log p) − log 2 is finite wherever log p is, even where both t and p underflow
    to 0: taking log((t + p) / 2) instead gives −inf there and a NaN gradient.
    """
    log_m = torch.logaddexp(torch.log(target), log_p) - math.log(2.0)
    p = log_p.exp()
    kl_target_m = (torch.xlogy(target, target) - target * log_m).sum(-1)
    kl_p_m = (p * (log_p - log_m)).sum(-1)
    return 0.5 * (kl_target_m + kl_p_m)


def _divergence_rows(target: torch.Tensor, log_p: torch.Tensor, divergence: str) -> torch.Tensor:
    if divergence == "kl":
        return _kl_rows(target, log_p)
    if divergence == "js":
        return _js_rows(target, log_p)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def _check_target(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float) -> None:
    check_positive(temperature)
    check_matrix(logits, "logits")
    check_same_shape(target_probs, "target_probs", logits, "logits")


def kl_to_target(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(q ‖ p) = mean_n Σ_m q_n,m · log(q_n,m / p_n,m), p = softmax(z / T); a scalar.

    Shapes: ``target_probs`` q [N, C] (treated as a constant), ``logits`` z [N, C]. Terms with q = 0 give 0.
    """
    _check_target(target_probs, logits, temperature)
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    return F.kl_div(log_p, target_probs.detach(), reduction="batchmean")


def js_to_target(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Jensen–Shannon divergence JS(q, p) = ½ KL(q ‖ m) + ½ KL(p ‖ m), m = ½(q + p), p = softmax(z / T),
    batch mean; a scalar. Symmetric mimicry: q [N, C] is constant, the gradient flows through p (also
    inside m). Finite in value and gradient for any finite logits.
    """
    _check_target(target_probs, logits, temperature)
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    return _js_rows(target_probs.detach(), log_p).mean()


def mean_kl_from_peers(peer_probs: Sequence[torch.Tensor], logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """1/(K−1) · Σ_l KL(p_l ‖ p_k) computed in one pass instead of K−1:

        1/(K−1) Σ_l Σ_m p_l,m log p_l,m  −  Σ_m p̄_m log p_k,m,     p̄ = 1/(K−1) Σ_l p_l

    (batch mean). The first part is a constant of the peers; the second is a single cross-entropy with
    their mean, so the cost no longer grows with the number of peers. Equal to the plain sum up to rounding.
    With one peer (K = 2) it is that peer's KL, computed by ``F.kl_div``.
    Shapes: ``peer_probs`` K−1 tensors [N, C], ``logits`` [N, C]; a scalar (without the T² of
    ``mutual_mimicry``).
    """
    check_positive(temperature)
    check_matrix(logits, "logits")
    check_all_same_shape(peer_probs, "peer_probs", logits, "logits")
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    if len(peer_probs) == 1:  # K = 2: the one KL itself, in PyTorch's fused kernel
        return F.kl_div(log_p, peer_probs[0].detach(), reduction="batchmean")
    peers = torch.stack([p.detach() for p in peer_probs])  # [K−1, N, C]
    neg_entropy = torch.xlogy(peers, peers).sum(-1).mean()
    return neg_entropy - (peers.mean(0) * log_p).sum(-1).mean()


def mutual_mimicry(
    logits: torch.Tensor,
    peer_probs: Sequence[torch.Tensor],
    temperature: float = 1.0,
    divergence: str = "kl",
    teacher: str = "peers",
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The DML mimicry term of one member k against its K−1 peers' probabilities (at T); a scalar.

        teacher="peers"    : T² · 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)           (DML, Zhang et al. eq. 9/10)
        teacher="ensemble" : T² · D(p̄ ‖ p_k),  p̄ = 1/(K−1) · Σ_{l≠k} p_l   (DML_e)

    D is KL (``divergence="kl"``) or Jensen–Shannon (``"js"``); p_k = softmax(z_k / T). The T² factor
    (Hinton et al.) keeps the gradient's size independent of T; at T = 1 it is 1.

    Shapes: ``logits`` [N, C]; ``peer_probs`` K−1 tensors [N, C], e.g. ``soft_probs(z_l, T)`` (detached
    here in any case). ``mask`` ([N] bool, or indices) keeps only some rows, e.g. ``labels >= 0`` for the
    semi-supervised "mimicry on labelled items only". No peer or no row gives 0 (with a graph).
    """
    check_choice(teacher, "teacher", TEACHERS)
    check_choice(divergence, "divergence", DIVERGENCES)
    check_positive(temperature)
    check_matrix(logits, "logits")
    check_all_same_shape(peer_probs, "peer_probs", logits, "logits")
    if mask is not None:
        logits, peer_probs = logits[mask], [p[mask] for p in peer_probs]
    if not peer_probs or logits.shape[0] == 0:
        return logits.sum() * 0.0
    if teacher == "ensemble":
        mean_probs = torch.stack([p.detach() for p in peer_probs]).mean(0)
        log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
        term = _divergence_rows(mean_probs, log_p, divergence).mean()
    elif divergence == "kl":
        term = mean_kl_from_peers(peer_probs, logits, temperature)
    else:
        term = sum(js_to_target(p, logits, temperature) for p in peer_probs) / len(peer_probs)
    return term if temperature == 1 else term * temperature**2


def stacked_mutual_mimicry(logits: torch.Tensor, temperature: float = 1.0, divergence: str = "kl",
                           teacher: str = "peers", mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The DML mimicry term of every member at once, from stacked logits [K, N, C]; returns [K].

    With p_k = softmax(z_k / T) and the targets p_l detached:
        peers:    m_k = T² · 1/(K−1) · Σ_{l≠k} D(p_l ‖ p_k)       (all K·K pairs, diagonal dropped)
        ensemble: m_k = T² · D(p̄_k ‖ p_k),  p̄_k = (Σ_l p_l − p_k) / (K−1)
    Equal to ``mutual_mimicry(logits[k], [soft_probs(logits[l], T) for l ≠ k])`` for each k. ``mask`` [N]
    keeps only some rows.
    """
    check_choice(teacher, "teacher", TEACHERS)
    check_choice(divergence, "divergence", DIVERGENCES)
    check_positive(temperature)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be stacked [K, N, C], got {_shape(logits)}")
    if mask is not None:
        logits = logits[:, mask]
    count = logits.shape[0]
    if count < 2 or logits.shape[1] == 0:  # one member, or no item (e.g. a batch without labels)
        return logits.sum(dim=(1, 2)) * 0.0
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    target = soft_probs(logits, temperature)
    if teacher == "ensemble":
        mean_others = (target.sum(0, keepdim=True) - target) / (count - 1)
        term = _divergence_rows(mean_others, log_p, divergence).mean(-1)
    elif teacher == "peers":
        pairs = _divergence_rows(target.unsqueeze(1), log_p.unsqueeze(0), divergence).mean(-1)  # [l, k]
        off_diagonal = 1.0 - torch.eye(count, dtype=pairs.dtype, device=pairs.device)
        term = (pairs * off_diagonal).sum(0) / (count - 1)
    else:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    return term if temperature == 1 else term * temperature**2


def _shape(value) -> str:
    return f"shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def feature_l2(features: torch.Tensor, peer_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over peers of the squared L2 distance between (penultimate) features, batch mean; a scalar:

        1/(K−1) Σ_{l≠k} mean_n ‖f_k(x_n) − f_l(x_n)‖²

    Shapes: ``features`` [N, D], ``peer_features`` K−1 tensors [N, D] (constant targets).
    """
    check_matrix(features, "features")
    check_all_same_shape(peer_features, "peer_features", features, "features")
    if not peer_features:
        return features.sum() * 0.0
    total = sum(((features - f.detach()) ** 2).sum(-1).mean() for f in peer_features)
    return total / len(peer_features)


def stacked_feature_l2(features: torch.Tensor) -> torch.Tensor:
    """``feature_l2`` of every member at once from stacked features [K, N, D]; returns [K]:
    1/(K−1) Σ_{l≠k} mean_n ‖f_k(x_n) − f_l(x_n)‖², the peers' features constant."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        raise ValueError(f"features must be stacked [K, N, D], got {_shape(features)}")
    count = features.shape[0]
    if count < 2:
        return features.sum(dim=(1, 2)) * 0.0
    pairs = ((features.unsqueeze(0) - features.detach().unsqueeze(1)) ** 2).sum(-1).mean(-1)  # [l, k]
    off_diagonal = 1.0 - torch.eye(count, dtype=pairs.dtype, device=pairs.device)
    return (pairs * off_diagonal).sum(0) / (count - 1)


def mutual_learning_losses(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    weight: float = 1.0,
    temperature: float = 1.0,
    divergence: str = "kl",
    teacher: str = "peers",
    mimic_on_labelled_only: bool = False,
) -> list[torch.Tensor]:
    """The DML loss of each of K members, one scalar per member:

        L_k = CE(z_k, y) + λ · mutual_mimicry(z_k, [softmax(z_l / T) for l ≠ k])

    ``logits`` are K tensors [N, C] from the members on the same batch; ``labels`` [N] with −1 for unlabelled
    items (left out of CE). The peers are detached, so ``sum(losses).backward()`` followed by a step of every
    member's optimizer is the simultaneous DML update (each member's gradient comes from its own loss only).
    ``mimic_on_labelled_only`` restricts the mimicry term to labelled items too.
    """
    check_nonnegative(weight, "weight")
    check_positive(temperature)
    check_choice(teacher, "teacher", TEACHERS)
    check_choice(divergence, "divergence", DIVERGENCES)
    if len(logits) == 0:
        raise ValueError("logits must hold one tensor per member, got none")
    check_matrix(logits[0], "logits[0]")
    check_all_same_shape(logits, "logits", logits[0], "logits[0]")
    check_labels(labels, logits[0], logits_name="logits[0]")
    targets = [soft_probs(z, temperature) for z in logits]
    mask = labels >= 0 if mimic_on_labelled_only else None
    losses = []
    for k, z in enumerate(logits):
        peers = [p for l, p in enumerate(targets) if l != k]
        losses.append(cross_entropy(z, labels)
                      + weight * mutual_mimicry(z, peers, temperature, divergence, teacher, mask))
    return losses
