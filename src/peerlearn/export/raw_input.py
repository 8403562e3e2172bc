"""Exports that take raw images: the training pipeline's preprocessing inside the exported graph.

The training pipeline turns a source image (uint8, C x H0 x W0) into the network's input in two steps:

1. once, when the dataset is loaded (only when ``data.image_size`` = S is set and differs from H0 x W0):
   ``torch.nn.functional.interpolate(x.float(), size=(S, S), mode="bilinear", align_corners=False)``
   (half-pixel centres, **no antialiasing**), rounded half to even and clamped to 0..255, stored as uint8;
2. per batch: x = (pixel / 255 − mean[c]) / std[c].

``RawImageModel`` wraps a member with these operations (the resize as explicit gathers and sums,
``bilinear_resize``, since ONNX runtimes' own Resize computes its coordinates differently and moves 1-2% of
the rounded pixels by one level), so the exported file takes the source's uint8 images (NCHW or NHWC) and
returns the logits. Pillow's ``resize(BILINEAR)`` antialiases when it shrinks
an image and gives other pixels: do not resize before a raw-input model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from peerlearn.data.prepare import load_raw, resize_images

LAYOUTS = ("nchw", "nhwc")


class RawImageModel(torch.nn.Module):
    """uint8 images [N, C, H0, W0] (or [N, H0, W0, C]) -> logits of ``model``, with the training preprocessing."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float], size: Optional[int],
                 layout: str = "nchw"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.model = model
        self.size = size
        self.layout = layout
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.layout == "nhwc" else pixels
        x = x.float()
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = bilinear_resize(x, self.size, self.size).round().clamp(0, 255)
        return self.model((x / 255.0 - self.mean) / self.std)


def bilinear_weights(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices i0, i1 and weights l0, l1 of a bilinear resize along one axis, half-pixel centres, as PyTorch's
    CPU kernel computes them in float32: s = max(fl(size_in / size_out) · (d + 0.5) − 0.5, 0) (one rounding),
    i0 = min(⌊s⌋, size_in − 1), i1 = min(i0 + 1, size_in − 1), l1 = s − i0, l0 = 1 − l1."""
    scale = np.float32(size_in) / np.float32(size_out)
    centres = np.arange(size_out, dtype=np.float32) + np.float32(0.5)
    source = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    l1 = np.clip(source - i0.astype(np.float32), 0, 1).astype(np.float32)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(np.float32(1) - l1), torch.from_numpy(l1)


def bilinear_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.interpolate(x, (height, width), mode="bilinear", align_corners=False)`` written as gathers,
    products and sums (width first, then height), which every ONNX runtime computes in the same float32 steps.
    Equal to PyTorch's kernel bit for bit when the scale is a power of two (28 -> 14, 8 -> 16: every weight and
    product is exact); otherwise within about 5e-5, so after rounding to uint8 a pixel whose exact value is a
    tie (k + 0.5) can differ by one level (as it can between PyTorch builds for different CPUs)."""
    i0, i1, l0, l1 = bilinear_weights(int(x.shape[-1]), width)
    x = x[..., i0] * l0 + x[..., i1] * l1
    i0, i1, l0, l1 = bilinear_weights(int(x.shape[-2]), height)
    return x[..., i0, :] * l0[:, None] + x[..., i1, :] * l1[:, None]


def raw_check_batch(config, items: int, layout: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``items`` source images of the test split (else train), as they come from the source (uint8,
    in ``layout``), and the same images resized as the training pipeline resized them (uint8 NCHW)."""
    raw = load_raw(config.data)
    x, split = (raw.test_x, "test") if len(raw.test_x) else (raw.train_x, "train")
    x = x[:items]
    resized = resize_images(x, config.data.image_size) if config.data.image_size else x
    return (x.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else x.contiguous()), resized, split


def describe_raw_input(pixels: torch.Tensor, layout: str) -> dict:
    """The ``input`` entry of the export JSON for a raw-input model."""
    shape = list(pixels.shape[1:])
    channels = shape[-1] if layout == "nhwc" else shape[0]
    height, width = (shape[0], shape[1]) if layout == "nhwc" else (shape[1], shape[2])
    return {"name": "input", "shape": [None, *shape], "dtype": "uint8", "layout": layout.upper(), "kind": "image",
            "channels": channels, "height": height, "width": width, "preprocessing_in_graph": True}
