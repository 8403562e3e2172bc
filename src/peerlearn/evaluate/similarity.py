"""Linear CKA: how similar two networks' representations of the same items are.

For features X [N, p] and Y [N, q] of the same N items, each column centred (mean over items subtracted),

    CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F)

(Kornblith et al. 2019, linear kernel). It lies in [0, 1], equals 1 when Y = X·Q·s for an orthogonal Q and a
scale s ≠ 0 (and for Y = X), does not need p = q, and is near 0 for unrelated features when N ≫ p, q.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from peerlearn.evaluate.metrics import as_numpy


def centre(features) -> np.ndarray:
    """float64 copy with the mean over items (rows) subtracted from every column."""
    x = as_numpy(features).astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear CKA of two feature matrices of the same items (formula in the module docstring)."""
    x, y = centre(x), centre(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs features of the same items: {x.shape[0]} vs {y.shape[0]} rows")
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    norms = np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")
    return float(cross / norms) if norms > 0 else float("nan")


def cka_matrix(features: Mapping[str, object], names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """CKA of every pair of members: ``result[a][b]`` (symmetric, 1 on the diagonal)."""
    names = list(names or features)
    result: dict[str, dict[str, float]] = {a: {} for a in names}
    for i, a in enumerate(names):
        result[a][a] = 1.0
        for b in names[i + 1:]:
            result[a][b] = result[b][a] = linear_cka(features[a], features[b])
    return result
