"""Batches of a lazily read split through a ``torch.utils.data.DataLoader`` with worker processes.

The in-memory ``BatchStream`` and this path share everything that decides *what* a batch holds: the
order of epoch e is the same seeded permutation, step s takes the same slice of it, and the batched
augmentation of step s draws from the same generator. Only *where* the pixels come from differs: here
the workers decode the batch's items (``LazyItems.read``) while the model trains on the previous one.

A user's Dataset may augment each item at random (e.g. random crops in ``__getitem__``). Before reading
the items of step s of epoch e, the worker seeds torch, numpy and Python's ``random`` with
hash(seed, e, s), so those draws depend on the step, not on which worker ran it or whether the run was
resumed: a run resumed mid-epoch reads exactly the batches the uninterrupted run read. A dataset that draws
no randomness says so with ``draws_random = False`` (image files, the decoded-image cache) and skips it.

Traffic between the processes is kept small, since on small images it costs more than reading the batch
(e.g. out of the decoded-image cache): a worker reads several consecutive steps per call (as many as fit
``PIPE_BATCH_BYTES``, at most ``MAX_STEPS_PER_CALL``), the indices go to it as numpy arrays, and batches up
to ``PIPE_BATCH_BYTES`` come back as numpy arrays through the worker's pipe rather than as tensors in new
shared-memory segments (larger batches still travel as shared-memory tensors).
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from peerlearn.data.lazy import LazyItems
from peerlearn.data.workers import worker_options

ITEM_SEED_SALT = 11
PIPE_BATCH_BYTES = 4 * 2**20
MAX_STEPS_PER_CALL = 8


def mix_seed(*parts: int) -> int:
    """A 63-bit hash of integers (the same mixing as ``peerlearn.data.batches``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value


class _StepReader(Dataset):
    """Reads the items of a few consecutive steps: key (epoch, [(step, numpy indices), ...]) -> one input
    batch per step (numpy arrays when small)."""

    def __init__(self, items: LazyItems, seed: int):
        self.items = items
        self.seed = seed
        self.seeded = getattr(items.dataset, "draws_random", True)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, list[tuple[int, np.ndarray]]]) -> list[torch.Tensor | np.ndarray]:
        epoch, steps = key
        if self.seeded:
            batches = [self._read(epoch, step, torch.from_numpy(indices)) for step, indices in steps]
        else:  # one read for the group, then cut into steps
            inputs = self.items.read(torch.from_numpy(np.concatenate([indices for _, indices in steps])))
            batches = list(inputs.split([len(indices) for _, indices in steps]))
        return [_for_pipe(inputs) for inputs in batches]

    def _read(self, epoch: int, step: int, indices: torch.Tensor) -> torch.Tensor:
        """``items.read(indices)`` with torch, numpy and ``random`` seeded by (seed, epoch, step), then restored."""
        item_seed = mix_seed(self.seed, epoch, step, ITEM_SEED_SALT)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # in the main process (0 workers) its RNG is left as it was
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            try:
                return self.items.read(indices)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def _for_pipe(inputs: torch.Tensor) -> torch.Tensor | np.ndarray:
    """A small batch as a numpy array (pickled through the pipe), a large one as a tensor (shared memory)."""
    small = inputs.numel() * inputs.element_size() <= PIPE_BATCH_BYTES
    return inputs.contiguous().numpy() if small and inputs.dtype != torch.bfloat16 else inputs


def _as_is(batch):
    """The DataLoader's collate function: a worker's batches need no conversion."""
    return batch


def steps_per_call(items: LazyItems, batch_size: int) -> int:
    """How many steps a worker reads per call: as many as fit ``PIPE_BATCH_BYTES`` (1 to ``MAX_STEPS_PER_CALL``).
    Each call costs a round trip between the processes, which small batches would otherwise be dominated by."""
    batch_bytes = batch_size * int(np.prod(items.item_shape)) * torch.empty((), dtype=items.dtype).element_size()
    return max(1, min(MAX_STEPS_PER_CALL, PIPE_BATCH_BYTES // max(batch_bytes, 1)))


def streamed_batches(items: LazyItems, order: torch.Tensor, batch_size: int, epoch: int, steps: range,
                     seed: int, pin_memory: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, indices, decoded inputs) for ``steps`` of ``epoch``; step s holds ``order[s*B:(s+1)*B]``."""
    wanted = [(step, order[step * batch_size : (step + 1) * batch_size].numpy()) for step in steps]
    group = steps_per_call(items, batch_size)
    keys = [(epoch, wanted[i : i + group]) for i in range(0, len(wanted), group)]
    if not keys:
        return
    workers = min(items.workers, len(keys))
    loader = DataLoader(_StepReader(items, seed), sampler=keys, batch_size=None, num_workers=workers,
                        collate_fn=_as_is, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(mix_seed(seed, epoch)),
                        prefetch_factor=(2 if group > 1 else 4) if workers else None,
                        **worker_options(workers))  # workers end with this process (data/workers.py)
    for (_, steps_read), batches in zip(keys, loader):  # the loader keeps the sampler's order
        for (step, indices), inputs in zip(steps_read, batches):
            if isinstance(inputs, np.ndarray):
                inputs = torch.from_numpy(inputs)
                inputs = inputs.pin_memory() if pin_memory else inputs
            yield step, torch.from_numpy(indices), inputs


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
