"""Step timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import torch


def median_step_seconds(recipe, steps: int, repeats: int) -> float:
    """Median over ``repeats`` passes of the seconds per ``recipe.step`` on the first ``steps`` training batches,
    after 3 warm-up steps. The recipe must be prepared (``peerlearn.api.prepare_run``). On CUDA the clock
    waits for the device (``torch.cuda.synchronize``) before it starts and stops."""
    on_cuda = getattr(recipe, "device", torch.device("cpu")).type == "cuda"
    recipe.cohort.train()
    batches = [b for _, b in zip(range(steps), (b for _, b in recipe.train_stream.epoch(0)))]
    for batch in batches[:3]:
        recipe.step(batch)
    timings = []
    for _ in range(repeats):
        if on_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches:
            recipe.step(batch)
        if on_cuda:
            torch.cuda.synchronize()
        timings.append((time.perf_counter() - started) / len(batches))
    return statistics.median(timings)
