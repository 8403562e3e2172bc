"""Feature-alignment losses between a source batch and an (unlabelled) target batch.

CORAL (Sun & Saenko 2016), with C the unbiased covariance of the rows (divide by n − 1):

    CORAL(S, T) = ‖C_S − C_T‖_F² / (4 d²)

Squared maximum mean discrepancy with a sum of RBF kernels k(x, y) = Σ_σ exp(−‖x − y‖² / (2σ²)):

    biased (V-statistic):   MMD²_b = mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) − 2 mean_ij k(s_i, t_j)
    unbiased (U-statistic): the same with the diagonal terms i = j left out of the first two means,
                            mean over m(m−1) and n(n−1) pairs.

The biased estimate is ≥ 0 and exactly 0 for identical sets; the unbiased one can be slightly
negative. ``bandwidths=None`` uses the median heuristic: σ_med = sqrt(median pairwise ‖x − y‖² / 2)
(detached) times (1/4, 1/2, 1, 2, 4).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from peerlearn.losses.checks import check_matrix, check_positive


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    """Two batches of features [m, d] and [n, d] of one feature size d."""
    check_matrix(source, "source")
    check_matrix(target, "target")
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target must have the same feature size, got {list(source.shape)} and "
                         f"{list(target.shape)}")


def _check_bandwidths(bandwidths: Sequence[float], name: str = "bandwidths") -> None:
    if len(bandwidths) == 0:
        raise ValueError(f"{name} must hold at least one value")
    for index, value in enumerate(bandwidths):
        check_positive(value, f"{name}[{index}]")


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance of the rows of x [n, d]: (x − x̄)ᵀ(x − x̄) / (n − 1)."""
    check_matrix(x, "x")
    if x.shape[0] < 2:
        raise ValueError(f"covariance needs at least 2 rows, got x of shape {list(x.shape)}")
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CORAL(S, T) = ‖C_S − C_T‖_F² / (4 d²), C the unbiased covariance of the rows; a scalar.

    Shapes: ``source`` [n, d], ``target`` [m, d] (n, m ≥ 2; both sides receive gradients).
    """
    _check_pair(source, target)
    d = source.shape[1]
    diff = covariance(source.float()) - covariance(target.float())
    return (diff * diff).sum() / (4 * d * d)


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, p=2.0).pow(2)


def median_bandwidths(source: torch.Tensor, target: torch.Tensor,
                      factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> list[float]:
    """σ_med · factors, σ_med² = median of the pairwise squared distances of source ∪ target / 2.

    Shapes: ``source`` [m, d], ``target`` [n, d]; returns one bandwidth per factor (floats, no gradient).
    """
    _check_pair(source, target)
    _check_bandwidths(factors, "factors")
    both = torch.cat([source, target]).detach().float()
    d2 = _sq_distances(both, both)
    off = d2[~torch.eye(len(both), dtype=torch.bool, device=both.device)]
    sigma = float((off.median() / 2).clamp_min(1e-12).sqrt()) if off.numel() else 1.0
    return [sigma * f for f in factors]


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    """K_ij = Σ_σ exp(−‖a_i − b_j‖² / (2σ²)) for ``a`` [m, d] and ``b`` [n, d]; returns [m, n]."""
    _check_bandwidths(bandwidths)
    d2 = _sq_distances(a, b)
    return sum(torch.exp(-d2 / (2.0 * s * s)) for s in bandwidths)


def mmd_loss(source: torch.Tensor, target: torch.Tensor, bandwidths: Optional[Sequence[float]] = None,
             unbiased: bool = False) -> torch.Tensor:
    """Squared MMD between two batches with a multi-bandwidth RBF kernel (see the module docstring); a scalar.

    Shapes: ``source`` [m, d], ``target`` [n, d]. Biased V-statistic by default, U-statistic with
    ``unbiased=True``; ``bandwidths`` σ's, or None for the median heuristic.
    """
    _check_pair(source, target)
    source, target = source.float(), target.float()
    if bandwidths is None:
        bandwidths = median_bandwidths(source, target)
    _check_bandwidths(bandwidths)
    kss = rbf_kernel(source, source, bandwidths)
    ktt = rbf_kernel(target, target, bandwidths)
    kst = rbf_kernel(source, target, bandwidths)
    m, n = len(source), len(target)
    if unbiased:
        if m < 2 or n < 2:
            raise ValueError("the unbiased MMD estimate needs at least 2 items per set")
        term_s = (kss.sum() - kss.diagonal().sum()) / (m * (m - 1))
        term_t = (ktt.sum() - ktt.diagonal().sum()) / (n * (n - 1))
    else:
        term_s, term_t = kss.mean(), ktt.mean()
    return term_s + term_t - 2.0 * kst.mean()


ALIGNMENT_LOSSES = {"coral": coral_loss, "mmd": mmd_loss}
