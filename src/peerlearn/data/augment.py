"""Batched augmentation on the training device: one random draw per image, no Python loop.

All randomness comes from an explicit ``torch.Generator`` so that a resumed run draws the same
augmentations as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift]² (zero fill): pad then crop.

    Used both for 'random crop with padding' (pad p, crop back) and Hinton's ±2-pixel jitter.
    """
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator, device="cpu").to(images.device)
    rows = torch.arange(h, device=images.device)[None, :] + offsets[:, :1]  # [n, h]
    cols = torch.arange(w, device=images.device)[None, :] + offsets[:, 1:]  # [n, w]
    batch = torch.arange(n, device=images.device)[:, None, None]
    # gather [n, h, w] positions from every channel at once
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device="cpu").to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchAugment:
    """Crop-with-padding, horizontal flip and pixel jitter, applied to a whole batch at once."""

    def __init__(self, crop_padding: int = 0, flip: bool = False, jitter: int = 0):
        self.crop_padding = crop_padding
        self.flip = flip
        self.jitter = jitter

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.jitter)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.dim() != 4:
            return images  # tabular data: nothing to augment
        images = random_translate(images, self.crop_padding, generator)
        images = random_translate(images, self.jitter, generator)
        if self.flip:
            images = random_flip(images, generator)
        return images
