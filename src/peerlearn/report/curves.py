"""Learning curves from a run's ``metrics.jsonl``: training loss terms and evaluation scores per epoch."""

from __future__ import annotations

import math
from typing import Any, Iterable

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
