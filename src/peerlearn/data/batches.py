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
        self.channels_last = False  # engine.channels_last on CUDA
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.std = torch.tensor(std, device=device).reshape(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.image:
            x = x / 255.0
        x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _mix_seed(*parts: int) -> int:
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value


class BatchStream:
    """Yields the batches of one epoch of a split, on ``device``.

    ``drop_last`` keeps every step the same size (BatchNorm behaves better, timing is regular).
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
        # small datasets live on the device once, as stored (uint8 for images)
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.on_host = False

    def keep_on_host(self, pin: bool = True) -> None:
        """Keep the split in (pinned) host memory and copy each batch to the device when drawn.

        For datasets larger than the device's memory. With ``pin`` the batch is gathered into
        page-locked memory and copied asynchronously (``non_blocking``), overlapping the next step.
        """
        self.x = self.split.x.cpu()
        self.y = self.split.y.cpu()
        if pin:
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.pinned = pin
        self.on_host = True

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.split))
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
        return torch.randperm(len(self.split), generator=generator)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, Batch]]:
        """Yield (step, batch) for ``epoch``, beginning at ``start_step`` (for resume)."""
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
            if self.augment is not None and self.augment.active:
                generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, step, 7))
                x = self.augment(x, generator)
            yield step, Batch(self.normalizer(x), y, index)
