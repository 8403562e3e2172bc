"""Seeded splits of a training set: validation hold-out, subsets, labelled/unlabelled."""

from __future__ import annotations

import torch


def stratified_permutation(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation in which the classes are interleaved, so any prefix is stratified.

    Each class is shuffled, then items are ordered by their rank within the class divided by the
    class size; taking the first n gives every class its share (±1) of n.
    """
    generator = torch.Generator().manual_seed(seed)
    keys = torch.empty(len(labels), dtype=torch.float64)
    for cls in labels.unique():
        members = (labels == cls).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        keys[order] = (torch.arange(len(order), dtype=torch.float64) + 0.5) / len(order)
    jitter = torch.rand(len(labels), generator=generator, dtype=torch.float64) * 1e-9
    return torch.argsort(keys + jitter)


def stratified_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of ``count`` items."""
    if count > len(labels):
        raise ValueError(f"asked for {count} items but there are only {len(labels)}")
    return stratified_permutation(labels, seed)[:count].sort().values


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, validation) with a stratified, seeded ``fraction`` held out."""
    n_val = int(round(len(labels) * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    order = stratified_permutation(labels, seed)
    return order[n_val:].sort().values, order[:n_val].sort().values


def labelled_mask(labels: torch.Tensor, amount: float, seed: int) -> torch.Tensor:
    """Boolean mask of the items whose labels are kept for semi-supervised training.

    ``amount`` <= 1 is a fraction of every class; ``amount`` > 1 is a count per class.
    Every class keeps at least one label.
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in labels.unique():
        members = (labels == cls).nonzero().flatten()
        keep = int(round(amount * len(members))) if amount <= 1 else int(amount)
        keep = max(1, min(keep, len(members)))
        chosen = members[torch.randperm(len(members), generator=generator)[:keep]]
        mask[chosen] = True
    return mask
