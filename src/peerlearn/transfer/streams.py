"""Training sets of the transfer recipe: cached features as a split, source + target concatenated,
and a stream that draws items with probability proportional to their importance weight."""

from __future__ import annotations

from typing import Optional

import torch

from peerlearn.data.batches import BatchStream, Normalizer, _mix_seed
from peerlearn.data.bundle import Split


class WeightedBatchStream(BatchStream):
    """Each epoch draws len(split) items with replacement, item i with probability w_i / Σ w.

    The expected loss of a batch is then Σ w_i ℓ_i / Σ w_i, the importance-weighted risk, while the
    supervised loss itself stays a plain mean.
    """

    def __init__(self, split: Split, batch_size: int, normalizer: Normalizer, device: torch.device,
                 weights: torch.Tensor, seed: int = 0, augment=None, drop_last: bool = True):
        super().__init__(split, batch_size, normalizer, device, seed=seed, augment=augment, shuffle=True,
                         drop_last=drop_last)
        if len(weights) != len(split) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be one non-negative value per item, not all zero")
        self.weights = weights.double().cpu()

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, 11))
        return torch.multinomial(self.weights, len(self.split), replacement=True, generator=generator)


def identity_normalizer(dim: int, device: torch.device) -> Normalizer:
    """Features are used as computed: (x − 0) / 1."""
    return Normalizer([0.0] * dim, [1.0] * dim, device, image=False)


def concat_splits(target: Split, source: Split) -> Split:
    """Target items first (positions 0 … n_T − 1), then the source items."""
    return Split(torch.cat([target.x, source.x]), torch.cat([target.y, source.y]))


def feature_split(features: torch.Tensor, split: Split) -> Split:
    return Split(features, split.y)


def domain_of(index: torch.Tensor, n_target: Optional[int]) -> torch.Tensor:
    """True for source items of a batch of the concatenated split (positions ≥ n_T)."""
    if n_target is None:
        return torch.zeros_like(index, dtype=torch.bool)
    return index >= n_target
