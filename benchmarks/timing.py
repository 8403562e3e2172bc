"""Step timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time


def median_step_seconds(recipe, steps: int, repeats: int) -> float:
    """Median over ``repeats`` passes of the seconds per ``recipe.step`` on the first ``steps`` training batches,
    after 3 warm-up steps. The recipe must be prepared (``peerlearn.api.prepare_run``)."""
    recipe.cohort.train()
    batches = [b for _, b in zip(range(steps), (b for _, b in recipe.train_stream.epoch(0)))]
    for batch in batches[:3]:
        recipe.step(batch)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            recipe.step(batch)
        timings.append((time.perf_counter() - started) / len(batches))
    return statistics.median(timings)
