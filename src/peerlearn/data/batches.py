"""Mini-batches from in-memory tensors, with seeded order and batched augmentation.

The order of epoch ``e`` and the augmentation of step ``s`` come from generators seeded with
(seed, e) and (seed, e, s): a run resumed at any step draws exactly what it would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from peerlearn.data.augment import BatchAugment
from peerlearn.data.bundle import Split
from peerlearn.data.lazy import LazyItems
from peerlearn.data.streaming import mix_seed, streamed_batches
from peerlearn.memory_format import to_channels_last


@dataclass
class Batch:
    x: torch.Tensor  # normalised float inputs on the device
    y: torch.Tensor  # int64 labels, -1 = unlabelled
    index: torch.Tensor  # positions in the split (for caches keyed by item)

    @property
    def labelled(self) -> torch.Tensor:
        return self.y >= 0


class Normalizer:
    """uint8 images -> float in 0..1 -> (x - mean) / std; tabular features -> (x - mean) / std."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, image: bool):
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.image = image
        self.channels_last = False  # engine.channels_last (on by default for convolutional image cohorts on a CPU)
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.std = torch.tensor(std, device=device).reshape(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.image and x.dtype == torch.uint8  # float images (a user's Dataset) are taken as given
        x = x.float()
        if scale:
            x = x / 255.0
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = to_channels_last(x)
        return x


_mix_seed = mix_seed


class BatchStream:
    """Yields the batches of one epoch of a split, on ``device``.

    ``drop_last`` keeps every step the same size (BatchNorm behaves better, timing is regular).
    A split whose inputs are ``LazyItems`` is streamed: the same steps, read by DataLoader workers.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        seed: int = 0,
        augment: Optional[BatchAugment] = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        self.split = split
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.device = device
        self.seed = seed
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last and len(split) >= batch_size
        self.streamed = isinstance(split.x, LazyItems)
        # small datasets live on the device once, as stored (uint8 for images); streamed ones stay where they are
        self.x = split.x if self.streamed else split.x.to(device)
        self.y = split.y.to(device)
        self.on_host = False

    def keep_on_host(self, pin: bool = True) -> None:
        """Keep the split in (pinned) host memory and copy each batch to the device when drawn.

        For datasets larger than the device's memory. With ``pin`` the batch is gathered into
        page-locked memory and copied asynchronously (``non_blocking``), overlapping the next step.
        """
        if self.streamed:
            return  # a streamed split is never on the device as a whole
        self.x = self.split.x.cpu()
        self.y = self.split.y.cpu()
        if pin:
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.pinned = pin
        self.on_host = True

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """The batches of one pass, in epoch 0's order (the split's own order when ``shuffle`` is off):
        ``for batch in run.stream("test"): model(batch.x), batch.y``."""
        for _, batch in self.epoch(0):
            yield batch

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.split))
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(len(self.split), generator=generator)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, Batch]]:
        """Yield (step, batch) for ``epoch``, beginning at ``start_step`` (for resume)."""
        if self.streamed:
            yield from self._streamed_epoch(epoch, start_step)
            return
        order = self.order(epoch).to("cpu" if self.on_host else self.device)
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            x, y = self.x[index], self.y[index]
            if self.on_host:
                if self.pinned:
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=self.pinned)
                y = y.to(self.device, non_blocking=self.pinned)
                index = index.to(self.device, non_blocking=False)
            yield step, self._finish(epoch, step, x, y, index)

    def _streamed_epoch(self, epoch: int, start_step: int) -> Iterator[tuple[int, Batch]]:
        """The same steps as ``epoch`` for a lazily read split, decoded by the DataLoader's workers."""
        pin = self.device.type == "cuda"
        for step, index, x in streamed_batches(self.x, self.order(epoch), self.batch_size, epoch,
                                               range(start_step, len(self)), self.seed, pin_memory=pin):
            x = x.to(self.device, non_blocking=pin)
            index = index.to(self.device)
            yield step, self._finish(epoch, step, x, self.y[index], index)

    def _finish(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Batch:
        """Augment (generator seeded by (seed, epoch, step)) and normalise one drawn batch."""
        if self.augment is not None and self.augment.active:
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, step, 7))
            x = self.augment(x, generator)
        return Batch(self.normalizer(x), y, index)
