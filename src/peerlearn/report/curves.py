"""Learning curves from a run's ``metrics.jsonl``: training loss terms and evaluation scores per epoch."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

Series = tuple[list[float], list[float]]  # (epochs, values)


def training_curves(records: Iterable[dict[str, Any]]) -> dict[str, Series]:
    """Per-member supervised loss ``<member>/ce`` per epoch, or the cohort's mean ``loss`` when a recipe
    logs no per-member term."""
    curves: dict[str, Series] = {}
    records = [r for r in records if r.get("kind") == "train" and _is_number(r.get("epoch"))]
    for record in records:
        keys = [k for k in record if k.endswith("/ce") and _is_number(record[k])]
        for key in keys or (["loss"] if _is_number(record.get("loss")) else []):
            epochs, values = curves.setdefault(key.removesuffix("/ce"), ([], []))
            epochs.append(float(record["epoch"]))
            values.append(float(record[key]))
    return curves


def eval_curves(records: Iterable[dict[str, Any]], metric: str = "top1") -> dict[str, dict[str, Series]]:
    """``{split: {member or 'ensemble': (epochs, values)}}`` of ``metric`` from the evaluation records."""
    curves: dict[str, dict[str, Series]] = {}
    for record in records:
        if record.get("kind") != "eval" or not _is_number(record.get("epoch")):
            continue  # another kind of line, or one that a damaged log garbled
        for split in ("val", "test"):
            split_scores = record.get(split)
            for name, scores in (split_scores if isinstance(split_scores, dict) else {}).items():
                if isinstance(scores, dict) and _is_number(scores.get(metric)):
                    epochs, values = curves.setdefault(split, {}).setdefault(name, ([], []))
                    epochs.append(float(record["epoch"]))
                    values.append(float(scores[metric]))
    return curves


def run_curve(records: Iterable[dict[str, Any]], key: str) -> dict[float, float]:
    """One run's ``{epoch: value}`` of ``key``: ``loss`` (training loss, mean over members), ``val members``
    (validation top-1, mean over members) or ``val ensemble``."""
    records = list(records)
    if key == "loss":
        series = list(training_curves(records).values())
    else:
        entries = eval_curves(records).get("val", {})
        wanted = key.removeprefix("val ")
        series = [curve for name, curve in entries.items() if (name == "ensemble") == (wanted == "ensemble")]
    by_epoch: dict[float, list[float]] = {}
    for epochs, values in series:
        for epoch, value in zip(epochs, values):
            by_epoch.setdefault(epoch, []).append(value)
    return {epoch: sum(v) / len(v) for epoch, v in sorted(by_epoch.items())}


def mean_curve(runs_records: Sequence[Iterable[dict[str, Any]]], key: str
               ) -> tuple[list[float], list[float], list[float]]:
    """(epochs, mean, std) of ``run_curve(records, key)`` over runs, at the epochs every run has:

        mean_e = (1/n) Σ_r v_{r,e},   std_e = sqrt( Σ_r (v_{r,e} − mean_e)² / (n − 1) )   (0 for one run)
    """
    curves = [run_curve(records, key) for records in runs_records]
    if not curves or not all(curves):
        return [], [], []
    epochs = sorted(set.intersection(*[set(c) for c in curves]))
    means, stds = [], []
    for epoch in epochs:
        values = [c[epoch] for c in curves]
        mean = sum(values) / len(values)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)
    return epochs, means, stds


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
