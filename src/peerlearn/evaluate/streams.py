"""The input streams of after-training tools: a split in its stored order, without augmentation."""

from __future__ import annotations

from peerlearn.data.batches import BatchStream
from peerlearn.data.bundle import Split


def analysis_stream(recipe, split: str, limit: int | None = None) -> BatchStream:
    """An unshuffled, un-augmented stream over ``split`` ('train', 'val' or 'test'), optionally the first
    ``limit`` items (the flatness probe on all of a large training set is slow)."""
    data_split = getattr(recipe.data, split)
    if limit is not None and limit < len(data_split):
        data_split = Split(data_split.x[:limit], data_split.y[:limit])
    return BatchStream(data_split, recipe.config.data.eval_batch_size, recipe.normalizer, recipe.device, shuffle=False)
