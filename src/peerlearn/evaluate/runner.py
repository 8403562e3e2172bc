"""Evaluate a finished run directory (used by `peerlearn evaluate` and ``peerlearn.evaluate_run``).

For each member and for the ensemble (the mean of the trainable members' probabilities, as during training):
top-1 / top-5, per-class precision / recall / F1, macro F1, confusion matrix and one-vs-rest ROC-AUC on one
split. On a re-identification run (a source with query and gallery images, e.g. market1501) also CMC rank-1/5/10
and mAP of every member's penultimate features and of the cohort's concatenated features.
The result is saved as ``RUN_DIR/evaluation_<split>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from peerlearn.data.batches import BatchStream
from peerlearn.data.bundle import Split
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.errors import ConfigError
from peerlearn.evaluate.features import predict_with_features
from peerlearn.evaluate.metrics import classification_metrics
from peerlearn.evaluate.retrieval import DEFAULT_RANKS, concatenate_features, retrieval_metrics

SPLITS = ("train", "val", "test")
COHORT = "cohort"


def split_stream(recipe, split: str) -> BatchStream:
    """An unshuffled, un-augmented stream over the run's ``split`` ('train', 'val' or 'test')."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    return BatchStream(getattr(recipe.data, split), recipe.config.data.eval_batch_size, recipe.normalizer,
                       recipe.device, shuffle=False)


def select_members(recipe, members: Sequence[str] | None) -> list[str]:
    """The named members (all when None); an unknown name is an error listing the run's members."""
    names = recipe.cohort.names
    unknown = [m for m in members or [] if m not in names]
    if unknown:
        raise ConfigError(f"The run has no member {unknown[0]!r}; its members: {', '.join(names)}.")
    return list(members or names)


def ensemble_members(recipe, names: Sequence[str]) -> list[str]:
    """Members averaged into the ensemble: the trainable ones among ``names`` (frozen teachers are not)."""
    return [n for n in names if recipe.cohort[n].trainable]


def classification_section(recipe, split: str, names: Sequence[str]) -> dict[str, Any] | None:
    """Classification metrics of every member and the ensemble on ``split`` (None when it has no labelled item)."""
    return classification_scores(recipe, split_stream(recipe, split), names)


def classification_scores(recipe, stream: BatchStream, names: Sequence[str]) -> dict[str, Any] | None:
    """Classification metrics of every member and the ensemble on the items of ``stream`` (None when none
    is labelled); ``peerlearn sql``'s TO EVALUATE scores a query's rows with it."""
    if int((stream.split.y >= 0).sum()) == 0:
        return None
    logits, _, labels = predict_with_features(recipe.cohort, stream, names)
    probs = {n: F.softmax(z, dim=1) for n, z in logits.items()}
    class_names = recipe.data.class_names
    result = {name: classification_metrics(p, labels, class_names) for name, p in probs.items()}
    averaged = ensemble_members(recipe, names)
    if len(averaged) > 1:
        mean = torch.stack([probs[n] for n in averaged]).mean(0)
        result[ENSEMBLE] = classification_metrics(mean, labels, class_names)
    return result


def retrieval_section(recipe, names: Sequence[str], ranks: Sequence[int] = DEFAULT_RANKS) -> dict[str, Any] | None:
    """CMC / mAP of each member's features and of the cohort's concatenated features (None without query/gallery)."""
    parts = recipe.data.retrieval
    if not {"query", "gallery"} <= set(parts):
        return None
    features = {}
    for key in ("query", "gallery"):
        part = parts[key]
        stream = BatchStream(Split(part.x, part.identities), recipe.config.data.eval_batch_size, recipe.normalizer,
                             recipe.device, shuffle=False)
        features[key] = predict_with_features(recipe.cohort, stream, names)[1]
    query, gallery = parts["query"], parts["gallery"]

    def score(q, g):
        return retrieval_metrics(q, query.identities, query.cameras, g, gallery.identities, gallery.cameras, ranks)

    result = {name: score(features["query"][name], features["gallery"][name]) for name in names}
    averaged = ensemble_members(recipe, names)
    if len(averaged) > 1:
        result[COHORT] = score(concatenate_features([features["query"][n] for n in averaged]),
                               concatenate_features([features["gallery"][n] for n in averaged]))
        result[COHORT]["members"] = averaged
    return {"query_items": len(query), "gallery_items": len(gallery), "scores": result}


def evaluate_run(run_dir: str | Path, split: str = "test", members: Sequence[str] | None = None,
                 device: str = "cpu", save: bool = True) -> dict[str, Any]:
    """Evaluate a finished run: classification metrics on ``split`` and, on re-id runs, retrieval metrics.

    Returns (and saves as ``RUN_DIR/evaluation_<split>.json``)::

        {"run_dir", "split", "items", "class_names", "members": [...],
         "classification": {member or "ensemble": {top1, top5, nll, macro_f1, roc_auc_macro,
                                                   per_class: [...], confusion: [[...]]}} or None,
         "retrieval": {"query_items", "gallery_items",
                       "scores": {member or "cohort": {cmc: {rank1, rank5, rank10}, map, queries, skipped}}} or None}
    """
    from peerlearn.api import load_run

    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    _, data, recipe = load_run(run_dir, device=device)
    names = select_members(recipe, members)
    result = {
        "run_dir": str(run_dir),
        "split": split,
        "items": len(getattr(data, split)),
        "class_names": data.class_names,
        "members": names,
        "classification": classification_section(recipe, split, names),
        "retrieval": retrieval_section(recipe, names),
    }
    if save:
        (Path(run_dir) / f"evaluation_{split}.json").write_text(json.dumps(result, indent=2))
    return result
