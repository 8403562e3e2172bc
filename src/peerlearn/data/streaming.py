"""Batches of a lazily read split through a ``torch.utils.data.DataLoader`` with worker processes.

The in-memory ``BatchStream`` and this path share everything that decides *what* a batch holds: the
order of epoch e is the same seeded permutation, step s takes the same slice of it, and the batched
augmentation of step s draws from the same generator. Only *where* the pixels come from differs: here
the workers decode the batch's items (``LazyItems.read``) while the model trains on the previous one.

A user's Dataset may augment each item at random (e.g. random crops in ``__getitem__``). Before reading
the items of step s of epoch e, the worker seeds torch, numpy and Python's ``random`` with
hash(seed, e, s), so those draws depend on the step, not on which worker ran it or whether the run was
resumed: a run resumed mid-epoch reads exactly the batches the uninterrupted run read.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from peerlearn.data.lazy import LazyItems

ITEM_SEED_SALT = 11


def mix_seed(*parts: int) -> int:
    """A 63-bit hash of integers (the same mixing as ``peerlearn.data.batches``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value


class _StepReader(Dataset):
    """Reads the items of one step: key (epoch, step, indices) -> (step, indices, inputs)."""

    def __init__(self, items: LazyItems, seed: int):
        self.items = items
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor]:
        epoch, step, indices = key
        item_seed = mix_seed(self.seed, epoch, step, ITEM_SEED_SALT)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # in the main process (0 workers) its RNG is left as it was
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            try:
                inputs = self.items.read(indices)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
        return step, indices, inputs


def streamed_batches(items: LazyItems, order: torch.Tensor, batch_size: int, epoch: int, steps: range,
                     seed: int, pin_memory: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, indices, decoded inputs) for ``steps`` of ``epoch``; step s holds ``order[s*B:(s+1)*B]``."""
    keys = [(epoch, step, order[step * batch_size : (step + 1) * batch_size]) for step in steps]
    if not keys:
        return
    workers = min(items.workers, len(keys))
    loader = DataLoader(_StepReader(items, seed), sampler=keys, batch_size=None, num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)),
                        prefetch_factor=4 if workers else None)
    yield from loader


DEFAULT_THRESHOLD_MB = 2048.0


def wants_stream(config, decoded_bytes: int, user_dataset: bool = False) -> bool:
    """``data.stream``: true / false as given; auto streams a user's Dataset, or data whose decoded
    size exceeds ``data.stream_threshold_mb``. Configs without the key (e.g. transfer source data) hold data
    in memory."""
    choice = getattr(config, "stream", False)
    if choice == "auto":
        threshold = float(getattr(config, "stream_threshold_mb", DEFAULT_THRESHOLD_MB))
        return user_dataset or decoded_bytes > threshold * 2**20
    return bool(choice)


def stream_workers(config) -> int:
    """``data.stream_workers`` (2 when the config has no such key)."""
    return int(getattr(config, "stream_workers", 2))
