"""The input streams of after-training tools: a split in its stored order, without augmentation."""

from __future__ import annotations

from peerlearn.data.batches import BatchStream


def analysis_stream(run, split: str, limit: int | None = None) -> BatchStream:
    """An unshuffled, un-augmented stream over ``split`` ('train', 'val' or 'test') of a run read back
    (``peerlearn.run_reader.LoadedRun``), optionally its first ``limit`` items (the flatness probe on all of a
    large training set is slow)."""
    return run.stream(split, limit)
