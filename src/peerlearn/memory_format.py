"""Channels-last (NHWC) memory order for image batches and convolutional networks.

On a CPU, oneDNN's convolutions and, above all, its max-pooling are much faster on channels-last tensors than on
NCHW ones (measured on the 2-core AMD EPYC of docs/results.md: max-pooling [64, 16, 14, 14] 1.1 ms NCHW vs 0.1 ms
NHWC; a DML step of two ``small_cnn`` at 28×28 210 → 160 ms, of two ``resnet20`` at 32×32 475 → 372 ms).
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


def same_layout(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s memory layout: channels-last when ``like`` has channels-last strides, else as it is
    (stacking views of a batch, or flattening them into one batch, silently drops the batch's layout)."""
    return to_channels_last(x) if x.dim() == 4 and is_channels_last(like) else x


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution (the layer whose speed the layout changes)."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())
