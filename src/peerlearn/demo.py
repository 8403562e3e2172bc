"""`peerlearn demo`: independent training vs Deep Mutual Learning of two small CNNs on digits.

No file and no network are needed (scikit-learn bundles the digits); it runs in well under a minute on
two CPU cores and prints per-member and ensemble accuracy of both cohorts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from peerlearn.api import RunResult, train

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "data": {"source": "digits", "val_fraction": 0.2, "batch_size": 32, "augment": {"jitter": 1}},
    "members": [
        {"name": "a", "model": "small_cnn", "model_args": {"width": 16}},
        {"name": "b", "model": "small_cnn", "model_args": {"width": 16}},
    ],
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    # one thread: these small convolutions gain little from two, and two threads lose a lot on a busy machine
    "train": {"epochs": 25, "threads": 1},
}


def run_demo(out: str | Path = "runs", epochs: int | None = None,
             report: Callable[[str, RunResult], None] | None = None) -> dict[str, RunResult]:
    """Train the same pair twice, independently and with DML; return both runs' results."""
    results = {}
    for recipe in ("independent", "mutual"):
        overrides = {"recipe": recipe, "name": f"demo-{recipe}"}
        if epochs is not None:
            overrides["train.epochs"] = epochs
        results[recipe] = train(DEMO_CONFIG, out=out, **overrides)
        if report is not None:
            report(recipe, results[recipe])
    return results
