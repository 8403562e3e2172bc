"""Items that stay on disk (or in the user's Dataset) until a batch needs them.

``LazyItems`` stands where a split's input tensor ``x`` would: it has a length, a ``shape`` and
``dim()``, and indexing it with a slice or an index tensor gives another ``LazyItems`` over those
items, so the split code (subsets, validation hold-out, test hold-out) runs unchanged on it and picks
exactly the same items as for an in-memory tensor. Nothing is decoded until ``read`` (one batch, by the
streaming ``BatchStream``) or ``to``/``materialize`` (a few items, e.g. a model's shape check).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from peerlearn.data.workers import worker_options

from peerlearn.errors import DataError


def as_tensor(item: Any, where: str) -> torch.Tensor:
    """One input as a tensor: a tensor as is, a numpy array converted, a PIL image as uint8 [C, H, W]."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(item))
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        pixels = np.asarray(item, dtype=np.uint8)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(pixels))
    raise DataError(f"{where} is a {type(item).__name__}; a dataset item's input must be a tensor, a numpy array "
                    "or a PIL image.")


def input_of(item: Any, where: str) -> torch.Tensor:
    """The input of a Dataset item ``(input, label)`` (or of a bare input) as a tensor."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise DataError(f"{where} is empty; a dataset item must be (input, label).")
        item = item[0]
    return as_tensor(item, where)


class LazyItems:
    """Positions ``positions`` of a map-style ``dataset``, read (decoded) only on demand.

    ``item_shape`` and ``dtype`` describe one decoded input (read from the first item when not given).
    ``workers``: DataLoader worker processes used when batches are streamed.
    """

    def __init__(self, dataset: Dataset, positions: Optional[torch.Tensor] = None,
                 item_shape: Optional[tuple[int, ...]] = None, dtype: Optional[torch.dtype] = None,
                 workers: int = 2):
        self.dataset = dataset
        self.positions = torch.arange(len(dataset)) if positions is None else positions.long()
        self.workers = workers
        if item_shape is None or dtype is None:
            if len(dataset) == 0:
                raise DataError("A dataset to stream is empty.")
            first = input_of(dataset[0], "item 0 of the dataset")
            item_shape, dtype = tuple(first.shape), first.dtype
        self.item_shape = tuple(item_shape)
        self.dtype = dtype

    def _view(self, positions: torch.Tensor) -> "LazyItems":
        return LazyItems(self.dataset, positions, self.item_shape, self.dtype, self.workers)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    def dim(self) -> int:
        return 1 + len(self.item_shape)

    def __getitem__(self, index) -> "LazyItems":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return self._view(self.positions[index])

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode the items at ``indices`` (positions in this view) in this process, stacked. A dataset with
        ``read_batch(positions)`` (e.g. the decoded-image cache) reads them in one call."""
        if hasattr(self.dataset, "read_batch"):
            return self.dataset.read_batch(self.positions[indices])
        items = [self.read_one(int(i)) for i in indices]
        if not items:
            return torch.empty((0, *self.item_shape), dtype=self.dtype)
        return torch.stack(items)

    def read_one(self, index: int) -> torch.Tensor:
        position = int(self.positions[index])
        value = input_of(self.dataset[position], f"item {position} of the dataset")
        if tuple(value.shape) != self.item_shape or value.dtype != self.dtype:
            raise DataError(f"Item {position} of the dataset has shape {tuple(value.shape)} and dtype {value.dtype}, "
                            f"but the first item has {self.item_shape} and {self.dtype}; every input must have the "
                            "same shape and type (resize in the Dataset, or give data.image_size for an image folder).")
        return value

    def materialize(self) -> torch.Tensor:
        """All items, decoded (with the worker processes) into one tensor."""
        out = torch.empty(self.shape, dtype=self.dtype)
        start = 0
        for chunk in self.chunks():
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        return out

    def to(self, *args, **kwargs) -> torch.Tensor:
        """Like ``Tensor.to``: decode every item of this view (meant for a few, e.g. ``x[:2].to(device)``)."""
        if len(self) <= 256:  # a few items: read here rather than start worker processes
            return self.read(torch.arange(len(self))).to(*args, **kwargs)
        return self.materialize().to(*args, **kwargs)

    def chunks(self, size: int = 256):
        """Yield the decoded items in order, ``size`` at a time, read by the worker processes."""
        batches = [torch.arange(i, min(i + size, len(self))) for i in range(0, len(self), size)]
        # an own generator: the loader's worker seed must not be drawn from (and advance) the global RNG
        loader = DataLoader(_Reader(self), sampler=batches, batch_size=None, num_workers=self.workers,
                            generator=torch.Generator().manual_seed(0), **worker_options(self.workers))
        yield from loader


class _Reader(Dataset):
    """Maps a tensor of indices (one batch) to their decoded, stacked inputs; runs in the worker processes."""

    def __init__(self, items: LazyItems):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.items.read(indices)


def streamed_channel_stats(items: LazyItems) -> tuple[list[float], list[float]]:
    """Per-channel (images) or per-feature mean and std of every item, in one streamed pass: the same
    computation as for in-memory data (``peerlearn.data.statistics.input_statistics``)."""
    from peerlearn.data.statistics import input_statistics

    stats = input_statistics(items)
    return stats.mean, stats.std
