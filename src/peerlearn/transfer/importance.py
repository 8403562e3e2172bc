"""Instance transfer: importance weights of source items from a domain classifier.

A logistic regression learns to tell source (d = 0) from target (d = 1) items. By Bayes' rule the
density ratio is

    p_T(x) / p_S(x) = [p(d=1 | x) / p(d=0 | x)] · [n_S / n_T]

(the second factor undoes the classes' sizes in the classifier's training set). The weights are
normalised to mean 1 over the source items, clipped to [low, high] (a few huge weights would
otherwise dominate the risk) and normalised to mean 1 again. Training on source items drawn with
probability ∝ w minimises the importance-weighted source risk Σ w_i ℓ_i / Σ w_i, an estimate of the
target risk under covariate shift.
"""

from __future__ import annotations

import numpy as np
import torch


def importance_weights(source: torch.Tensor, target: torch.Tensor, clip: tuple[float, float] = (0.1, 10.0),
                       regularization: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Weights w_i (mean 1) of the source rows, from a logistic domain classifier on flattened inputs.

    ``regularization`` is the inverse L2 strength C of scikit-learn's LogisticRegression. Features are
    standardised with the pooled mean and std before fitting.
    """
    from sklearn.linear_model import LogisticRegression

    if len(source) == 0 or len(target) == 0:
        raise ValueError("importance weights need source and target items")
    xs = source.reshape(len(source), -1).double().cpu().numpy()
    xt = target.reshape(len(target), -1).double().cpu().numpy()
    pooled = np.concatenate([xs, xt])
    mean, std = pooled.mean(0), pooled.std(0) + 1e-8
    x = (pooled - mean) / std
    d = np.concatenate([np.zeros(len(xs)), np.ones(len(xt))])
    classifier = LogisticRegression(C=regularization, max_iter=1000, random_state=seed)
    classifier.fit(x, d)
    # log p(d=1|x)/p(d=0|x) is the decision function: exact and overflow-free
    log_ratio = classifier.decision_function(x[: len(xs)]) + np.log(len(xs) / len(xt))
    log_ratio -= log_ratio.max()
    weights = np.exp(log_ratio)
    weights /= weights.mean()
    low, high = clip
    weights = np.clip(weights, low, high)
    weights /= weights.mean()
    return torch.from_numpy(weights).float()


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size (Σ w)² / Σ w²: n for equal weights, small when a few dominate."""
    weights = weights.double()
    return float(weights.sum() ** 2 / (weights * weights).sum())
