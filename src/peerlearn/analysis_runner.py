"""Run the paper's analyses on a finished run directory (used by `peerlearn analyze`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from peerlearn.api import load_run
from peerlearn.data.batches import BatchStream
from peerlearn.evaluate.analyses import cohort_flatness, posterior_entropy, rank_mass

DEFAULT_SIGMAS = (0.0, 0.005, 0.01, 0.02, 0.05)


def analysis_stream(recipe, split: str, limit: int | None = None) -> BatchStream:
    """An unshuffled, un-augmented stream over ``split`` ('train', 'val' or 'test'), optionally the first
    ``limit`` items (the flatness probe on all of a large training set is slow)."""
    from peerlearn.data.bundle import Split

    data_split = getattr(recipe.data, split)
    if limit is not None and limit < len(data_split):
        data_split = Split(data_split.x[:limit], data_split.y[:limit])
    return BatchStream(data_split, recipe.config.data.eval_batch_size, recipe.normalizer, recipe.device, shuffle=False)


def analyze_run(run_dir: str | Path, split: str = "train", sigmas: Sequence[float] = DEFAULT_SIGMAS,
                draws: int = 3, limit: int | None = 5000, members: Sequence[str] | None = None) -> dict[str, Any]:
    """Posterior entropy, rank-1..5 mass and the flatness curve of every member; saved as analysis.json."""
    config, data, recipe = load_run(run_dir)
    names = list(members or recipe.cohort.names)
    stream = analysis_stream(recipe, split, limit)
    result = {
        "split": split,
        "items": len(stream.split),
        "entropy": posterior_entropy(recipe.cohort, stream, names),
        "rank_mass": rank_mass(recipe.cohort, stream, names),
        "flatness": cohort_flatness(recipe.cohort, stream, sigmas, draws, seed=config.seed, names=names),
    }
    (Path(run_dir) / "analysis.json").write_text(json.dumps(result, indent=2))
    return result
