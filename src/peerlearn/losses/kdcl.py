"""KDCL (Guo et al., CVPR 2020, "Online Knowledge Distillation via Collaborative Learning").

K separate networks of any architectures, each fed its own augmented view of the batch, learn from one
teacher built from their logits:

    L_k = CE(z_k, y) + λ · T² · KL(softmax(z_t / T) ‖ softmax(z_k / T)),      z_t constant.

The teacher-building rules ("ensembling rules"), all returning constant teacher logits [B, C] from the
members' logits [K, B, C]:

    MinLogit   z_t,c = min_k (z_k,c − z_k,y): every member's logits shifted so its target-class logit is 0,
               then the element-wise minimum; the target logit stays 0 while every other logit is as low as
               any member puts it, so CE(z_t, y) ≤ CE(z_k, y) for every k.
    Linear     z_t = Σ_k w_k z_k with w = argmin_{w ∈ simplex} CE(Σ_k w_k z_k, y) on the batch itself
               (a convex problem in w: the logits are linear in w and CE is convex in the logits).
    General    the same combination with weights fitted on held-out data (the validation split) instead of
               the training batch: weights that generalise rather than fit the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peerlearn.losses.online_base import (Logits, OnlineLoss, check_one_per_item, check_temperature, check_weight,
                                          kl_between_logits, stack_logits, summed_cross_entropy)


def _require_labels(labels: torch.Tensor, batch: int, rule: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{rule} needs labels of shape [{batch}], got {tuple(labels.shape)}")
    if bool((labels < 0).any()):
        raise ValueError(f"{rule} needs a label for every item (found −1, an unlabelled item)")


def min_logit_teacher(member_logits: Logits, labels: torch.Tensor) -> torch.Tensor:
    """KDCL-MinLogit: z_t[b, c] = min_k ( z_k[b, c] − z_k[b, y_b] ); [K, B, C] and [B] → [B, C], detached.

    Every label must be known (−1 is refused): the rule is defined by the target class.
    """
    logits = stack_logits(member_logits, "member_logits").detach()
    _require_labels(labels, logits.shape[1], "min_logit_teacher")
    target = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1))
    return (logits - target).min(0).values


def weighted_teacher(member_logits: Logits, weights: torch.Tensor) -> torch.Tensor:
    """z_t = Σ_k w_k z_k; [K, B, C] and [K] → [B, C], detached (the Linear and General rules' teacher)."""
    logits = stack_logits(member_logits, "member_logits").detach()
    if weights.shape != (logits.shape[0],):
        raise ValueError(f"weights must be [K] = [{logits.shape[0]}], got {tuple(weights.shape)}")
    return torch.einsum("k,kbc->bc", weights.detach().to(logits.dtype), logits)


def _project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of v [K] onto {w : w ≥ 0, Σ w = 1} (sort-based, exact)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1
    ranks = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    support = int((u - cumulative / ranks > 0).nonzero().max())
    return torch.clamp(v - cumulative[support] / (support + 1), min=0)


def _combined_ce(weights: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.einsum("k,kbc->bc", weights, logits), labels)


def linear_teacher_weights(member_logits: Logits, labels: torch.Tensor, max_iter: int = 200,
                           tol: float = 1e-7) -> torch.Tensor:
    """KDCL-Linear's weights: w = argmin CE(Σ_k w_k z_k, y) subject to w_k ≥ 0, Σ_k w_k = 1; returns w [K].

    Shapes: ``member_logits`` [K, N, C], ``labels`` [N] (every label known). The problem is convex; it is
    solved by projected gradient descent in float64 from the uniform weights, with a backtracking step
    (accepted when f(w') ≤ f(w) + g·(w' − w) + ‖w' − w‖² / 2t), until the step moves w by less than ``tol``
    or after ``max_iter`` steps. At the optimum the gradient g_k = ∂CE/∂w_k is equal on the weights > 0
    and no smaller elsewhere. Cost per step: one [N, C] softmax; the result is a constant (no graph).
    """
    stacked = stack_logits(member_logits, "member_logits").detach()
    _require_labels(labels, stacked.shape[1], "linear_teacher_weights")
    logits = stacked.double()
    count = logits.shape[0]
    w = torch.full((count,), 1.0 / count, dtype=logits.dtype, device=logits.device)
    if count == 1:
        return w.to(stacked.dtype)
    step = 1.0
    for _ in range(max_iter):
        w_var = w.clone().requires_grad_(True)
        with torch.enable_grad():
            value = _combined_ce(w_var, logits, labels)
            (grad,) = torch.autograd.grad(value, w_var)
        value = value.detach()
        while True:
            candidate = _project_to_simplex(w - step * grad)
            move = candidate - w
            bound = value + (grad * move).sum() + (move * move).sum() / (2 * step)
            if _combined_ce(candidate, logits, labels) <= bound + 1e-15 or step < 1e-12:
                break
            step /= 2
        w = candidate
        if float(move.abs().max()) < tol:
            break
        step *= 2
    return w.to(stacked.dtype)


def linear_teacher(member_logits: Logits, labels: torch.Tensor, max_iter: int = 200) -> torch.Tensor:
    """KDCL-Linear: z_t = Σ_k w_k z_k with the batch's optimal simplex weights (``linear_teacher_weights``);
    [K, B, C] and [B] → [B, C], detached."""
    weights = linear_teacher_weights(member_logits, labels, max_iter=max_iter)
    return weighted_teacher(member_logits, weights)


def generalization_weights(val_logits: Logits, val_labels: torch.Tensor, max_iter: int = 200) -> torch.Tensor:
    """KDCL's generalisation-weighted rule, as implemented here: the Linear rule's simplex weights fitted on
    the members' logits on held-out data (the validation split, [K, N, C] and [N]) instead of on the training
    batch; returns w [K]. Refit them from time to time (e.g. once per epoch) and build each batch's teacher
    with ``weighted_teacher(member_logits, w)``. The paper derives its weights from an estimate of each
    member's generalisation error; fitting the ensemble's held-out loss directly is this library's reading.
    """
    return linear_teacher_weights(val_logits, val_labels, max_iter=max_iter)


def kdcl_loss(member_logits: Logits, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
              kl_weight: float = 1.0) -> OnlineLoss:
    """KDCL: L = Σ_k [ CE(z_k, y) + λ · T² · KL(softmax(z_t / T) ‖ softmax(z_k / T)) ]; z_t constant.

    Shapes: ``member_logits`` [K, B, C] or K tensors [B, C] (each member on its own view of the batch),
    ``teacher_logits`` [B, C] from ``min_logit_teacher``, ``linear_teacher`` or ``weighted_teacher``,
    ``labels`` [B]. Parts: ``ce`` (Σ_k CE) and ``kl`` (T² Σ_k KL, before λ). Each member's gradient comes
    from its own terms only, so one ``backward`` of the sum trains every member.
    """
    check_temperature(temperature)
    check_weight("kl_weight", kl_weight)
    logits = stack_logits(member_logits, "member_logits")
    check_one_per_item("teacher_logits", teacher_logits, logits)
    ce = summed_cross_entropy(logits, labels)
    kl = kl_between_logits(teacher_logits.unsqueeze(0).expand_as(logits), logits, temperature) * temperature**2
    return OnlineLoss(ce + kl_weight * kl, {"ce": ce, "kl": kl})
