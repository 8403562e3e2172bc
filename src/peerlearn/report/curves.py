"""Learning curves from a run's ``metrics.jsonl``: training loss terms and evaluation scores per epoch."""

from __future__ import annotations

from typing import Any, Iterable

Series = tuple[list[float], list[float]]  # (epochs, values)


def training_curves(records: Iterable[dict[str, Any]]) -> dict[str, Series]:
    """Per-member supervised loss ``<member>/ce`` per epoch, or the cohort's mean ``loss`` when a recipe
    logs no per-member term."""
    curves: dict[str, Series] = {}
    records = [r for r in records if r.get("kind") == "train"]
    for record in records:
        keys = [k for k in record if k.endswith("/ce") and isinstance(record[k], (int, float))]
        for key in keys or (["loss"] if isinstance(record.get("loss"), (int, float)) else []):
            epochs, values = curves.setdefault(key.removesuffix("/ce"), ([], []))
            epochs.append(float(record["epoch"]))
            values.append(float(record[key]))
    return curves


def eval_curves(records: Iterable[dict[str, Any]], metric: str = "top1") -> dict[str, dict[str, Series]]:
    """``{split: {member or 'ensemble': (epochs, values)}}`` of ``metric`` from the evaluation records."""
    curves: dict[str, dict[str, Series]] = {}
    for record in records:
        if record.get("kind") != "eval":
            continue
        for split in ("val", "test"):
            for name, scores in (record.get(split) or {}).items():
                if isinstance(scores, dict) and metric in scores:
                    epochs, values = curves.setdefault(split, {}).setdefault(name, ([], []))
                    epochs.append(float(record["epoch"]))
                    values.append(float(scores[metric]))
    return curves
