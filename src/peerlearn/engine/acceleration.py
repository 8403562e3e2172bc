"""Fast paths of ``engine``: bf16 autocast, channels-last, pinned-memory batches, torch.compile.

bf16 and pinned memory only pay off on a GPU: asked for on a CPU run they are ignored with a warning (the same
config then runs on a laptop, in fp32). ``torch.compile`` works on both and is applied wherever it is asked for.

* bf16: the recipe's forward passes run under ``torch.autocast(dtype=bfloat16)``; losses are
  computed on the logits cast back to fp32; weights, gradients and optimizer states stay fp32.
* channels-last: convolutional members and image batches in NHWC memory order (``peerlearn.memory_format``).
  Unset (the default) it is on for CPU runs, where oneDNN's convolutions and max-pooling are much faster in it,
  and off on CUDA (where ``true`` asks for it: faster convolutions on tensor cores). The values a network
  computes do not depend on the layout beyond float rounding; saved weights are written contiguous.
* pinned memory: the training split stays in page-locked host memory; each batch is gathered there
  and copied with ``non_blocking=True`` (for datasets too large for the GPU).
* compile: ``Recipe.compile``: ``nn.Module.compile`` on every member (the state-dict keys do not change), or
  the recipe's own training forward compiled as a function (greedy's active block over its frozen prefix).
"""

from __future__ import annotations

import warnings

import torch

from peerlearn.memory_format import has_convolutions

CUDA_ONLY = ("precision", "pin_memory")


def _requested(engine, option: str) -> bool:
    value = getattr(engine, option)
    return value == "bf16" if option == "precision" else bool(value)


def configure(recipe, device: torch.device) -> list[str]:
    """Apply ``recipe.config.engine`` to a built recipe; return the options that were ignored."""
    engine = recipe.config.engine
    ignored = []
    if device.type != "cuda":
        for option in CUDA_ONLY:
            if _requested(engine, option):
                ignored.append(option)
                warnings.warn(f"engine.{option}={getattr(engine, option)} needs a CUDA device; this run is on "
                              f"{device}, so it is ignored (fp32, batches already in memory).",
                              UserWarning, stacklevel=2)
        cuda = False
    else:
        cuda = True
    if cuda and engine.precision == "bf16":
        recipe.autocast_dtype = torch.bfloat16
    if use_channels_last(recipe, cuda):
        for member in recipe.cohort:
            member.model.to(memory_format=torch.channels_last)
        for stream in [recipe.train_stream, *recipe.eval_streams.values()]:
            stream.normalizer.channels_last = True
    if cuda and engine.pin_memory:
        recipe.train_stream.keep_on_host(pin=True)
    if engine.compile:
        recipe.compile(engine.compile_backend)
    return ignored


def use_channels_last(recipe, cuda: bool) -> bool:
    """``engine.channels_last``, or unset: on for a CPU run of image data with a convolutional member."""
    asked = recipe.config.engine.channels_last
    if not recipe.data.is_image or asked is False:
        return False
    if asked is None and cuda:
        return False
    return any(has_convolutions(member.model) for member in recipe.cohort)
