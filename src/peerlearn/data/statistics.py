"""Normalisation statistics of a training split: per-channel (images) or per-feature mean, std and range.

One function serves inputs held in memory and inputs streamed from disk or from a user's Dataset, and it
reads both in the same chunks of ``STATS_CHUNK`` items in the same order, so a folder streamed and the same
folder in memory give the same statistics bit for bit (and so the same normalised batches and weights).

For channel (or feature) c with values v_1..v_n:

    mean_c = Σ v / n,    std_c = max(sqrt((Σ v² − n · mean_c²) / (n − 1)), 1e-6)

uint8 images are in 0..1 units (v = pixel / 255); their sums Σ pixel and Σ pixel² are exact integers, so the
result does not depend on the order of the items at all. Other inputs (float images of a user, tabular
features) are summed in float64, chunk by chunk in item order. The range (min, max) of the raw values is kept
too: prediction uses it to tell whether float images were in 0..1 (pixel / 255) units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

STATS_CHUNK = 256
MIN_STD = 1e-6


@dataclass
class InputStatistics:
    mean: list[float]
    std: list[float]
    low: float  # the smallest raw value (pixel values for uint8 images)
    high: float


def _chunks(x) -> Iterator[torch.Tensor]:
    """The items of ``x`` (a tensor or ``LazyItems``) in order, ``STATS_CHUNK`` at a time."""
    from peerlearn.data.lazy import LazyItems

    if isinstance(x, LazyItems):
        yield from x.chunks(STATS_CHUNK)
        return
    for start in range(0, len(x), STATS_CHUNK):
        yield x[start:start + STATS_CHUNK]


def input_statistics(x) -> InputStatistics:
    """Mean, std (unbiased, floored at 1e-6) per channel of images [N, C, H, W] or per feature of [N, ...],
    and the raw values' range, in one pass over ``x`` (a tensor or ``LazyItems``)."""
    image = x.dim() == 4
    exact = x.dtype == torch.uint8
    total = total_sq = None
    low, high = math.inf, -math.inf
    count = 0
    for chunk in _chunks(x):
        if len(chunk) == 0:
            continue
        values = chunk.transpose(0, 1).reshape(chunk.shape[1], -1) if image else chunk.reshape(len(chunk), -1).T
        values = values.long() if exact else values.double()
        sums, squares = values.sum(1), (values * values).sum(1)
        total = sums if total is None else total + sums
        total_sq = squares if total_sq is None else total_sq + squares
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        count += values.shape[1]
    if total is None:
        raise ValueError("no items to compute normalisation statistics from")
    if exact:  # exact integers: mean = S1 / (255 n), var = (n S2 − S1²) / (255² n (n − 1))
        means, stds = [], []
        for s1, s2 in zip(total.tolist(), total_sq.tolist()):
            means.append(s1 / (255.0 * count))
            variance = (count * s2 - s1 * s1) / (255.0 ** 2 * count * max(count - 1, 1))
            stds.append(max(math.sqrt(max(variance, 0.0)), MIN_STD))
        return InputStatistics(means, stds, low, high)
    mean = total / count
    variance = (total_sq - count * mean * mean) / max(count - 1, 1)
    return InputStatistics(mean.tolist(), variance.clamp_min(0).sqrt().clamp_min(MIN_STD).tolist(), low, high)
