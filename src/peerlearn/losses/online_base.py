"""What the online-distillation losses (ONE, CL-ILR, OKDDip, KDCL, PCL) share: the result type, argument
checks and a KL divergence between two sets of logits.

Conventions (as in the rest of ``peerlearn.losses``): ``K`` branches or members, ``B`` items, ``C`` classes;
stacked logits are [K, B, C]; p = softmax(z / T); divergences are batch means; labels are int64 with −1 for
an unlabelled item (left out of every cross-entropy).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F

from peerlearn.losses.classification import cross_entropy
from peerlearn.losses.mimicry import at_temperature


class OnlineLoss(NamedTuple):
    """A method's total loss (a scalar to ``backward``) and its named parts (scalars, still in the graph:
    detach them to log). The total is the weighted sum of the parts given in each function's docstring."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


def check_temperature(temperature: float) -> None:
    """ValueError unless T is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def check_weight(name: str, value: float, upper: float | None = None) -> None:
    """ValueError unless ``value`` is a finite number ≥ 0 (and ≤ ``upper`` when given); the message names it."""
    allowed = f"in [0, {upper}]" if upper is not None else "≥ 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (upper is not None and value > upper):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def stack_logits(logits: Logits, name: str = "logits", min_count: int = 1) -> torch.Tensor:
    """[K, B, C] from a stacked tensor or a sequence of K tensors [B, C]; ValueError on another shape or on
    fewer than ``min_count`` members."""
    if isinstance(logits, torch.Tensor):
        stacked = logits
    else:
        stacked = torch.stack(list(logits)) if len(logits) else None
    if stacked is None or stacked.dim() != 3:
        shape = None if stacked is None else tuple(stacked.shape)
        raise ValueError(f"{name} must be [K, B, C] (K branches, B items, C classes), got shape {shape}")
    if stacked.shape[0] < min_count:
        raise ValueError(f"{name} needs at least {min_count} branches or members, got {stacked.shape[0]}")
    return stacked


def check_one_per_item(name: str, tensor: torch.Tensor, logits: torch.Tensor) -> None:
    """``tensor`` must be [B, C], one row per item of the stacked ``logits`` [K, B, C] (a teacher, a leader)."""
    if tensor.shape != logits.shape[1:]:
        raise ValueError(f"{name} must be [B, C] = {list(logits.shape[1:])}, got {list(tensor.shape)}")


def kl_between_logits(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float,
                      detach_target: bool = True) -> torch.Tensor:
    """KL(softmax(v / T) ‖ softmax(z / T)) = mean_b Σ_c q_bc (log q_bc − log p_bc), q = softmax(v / T); a scalar.

    Shapes: ``target_logits`` v and ``logits`` z [..., B, C] (leading dimensions are summed: [K, B, C] gives
    Σ_k KL_k). From log-softmaxes, so it stays finite when the probabilities saturate. With
    ``detach_target=False`` the gradient also flows into v (through q and log q).
    """
    if detach_target:
        target_logits = target_logits.detach()
    log_q = F.log_softmax(at_temperature(target_logits, temperature), dim=-1)
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    rows = (log_q.exp() * (log_q - log_p)).sum(-1)  # [..., B]
    return rows.mean(-1).sum() if rows.dim() > 1 else rows.mean()


def kl_to_probs(target_probs: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(q ‖ softmax(z / T)) with q [..., B, C] a constant distribution, batch mean, summed over leading
    dimensions; terms with q = 0 give 0."""
    target_probs = target_probs.detach()
    log_p = F.log_softmax(at_temperature(logits, temperature), dim=-1)
    rows = (torch.xlogy(target_probs, target_probs) - target_probs * log_p).sum(-1)
    return rows.mean(-1).sum() if rows.dim() > 1 else rows.mean()


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_k CE(z_k, y) over stacked logits [K, B, C], each CE a mean over the labelled items (−1 left out)."""
    return torch.stack([cross_entropy(z, labels) for z in logits.unbind(0)]).sum()
