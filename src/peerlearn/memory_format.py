"""Channels-last (NHWC) memory order for image batches and convolutional networks.

On a CPU, oneDNN's convolutions and, above all, its max-pooling are much faster on channels-last tensors than on
NCHW ones (measured on the 2-core AMD EPYC of docs/results.md: max-pooling [64, 16, 14, 14] 1.1 ms NCHW vs 0.1 ms
NHWC; a DML step of two ``small_cnn`` at 28×28 1.26× faster, of two ``resnet20`` at 32×32 1.31×:
``benchmarks/bench_layout.py``).
A convolution keeps its input's layout, so the layout of the batch and of the weights decides the whole forward.

A one-channel image is "contiguous" in both layouts (the channel stride is never used), so
``x.contiguous(memory_format=torch.channels_last)`` may keep NCHW strides, which convolutions then read as NCHW:
``to_channels_last`` sets the strides explicitly.
"""

from __future__ import annotations

import torch
from torch import nn


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor has channels-last strides (checked on the strides, one channel included)."""
    return x.dim() == 4 and x.stride(1) == 1 and x.permute(0, 2, 3, 1).is_contiguous()


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` [N, C, H, W] with channels-last strides (C·H·W, 1, W·C, C); other tensors unchanged."""
    if x.dim() != 4:
        return x
    _, c, h, w = x.shape
    if x.stride()[1:] == (1, w * c, c):
        return x
    return torch.empty_strided(x.shape, (c * h * w, 1, w * c, c), dtype=x.dtype, device=x.device).copy_(x)


def stack_like(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``torch.stack(tensors)`` [K, N, C, H, W] whose slices ``[k]`` (and ``flatten(0, 1)``) keep ``like``'s
    channels-last strides when it has them; a plain ``torch.stack`` would return NCHW slices."""
    if like.dim() != 4 or not is_channels_last(like):
        return torch.stack(tensors)
    return torch.stack([t.permute(0, 2, 3, 1) for t in tensors]).permute(0, 1, 4, 2, 3)


def flatten_batches(stacked: torch.Tensor) -> torch.Tensor:
    """[K, N, C, H, W] → [K·N, C, H, W], channels-last when the slices are (``flatten(0, 1)`` returns NCHW
    strides for one channel)."""
    if stacked.dim() == 5 and is_channels_last(stacked[0]):
        return stacked.permute(0, 1, 3, 4, 2).flatten(0, 1).permute(0, 3, 1, 2)
    return stacked.flatten(0, 1)


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution (the layer whose speed the layout changes)."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())
