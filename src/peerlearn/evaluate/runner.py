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
from peerlearn.engine.evaluation import ENSEMBLE, ensemble_log_probs, predict
from peerlearn.errors import ConfigError
from peerlearn.evaluate.features import predict_with_features
from peerlearn.evaluate.metrics import classification_metrics
from peerlearn.evaluate.retrieval import DEFAULT_RANKS, concatenate_features, retrieval_metrics
from peerlearn.progress import Mode
from peerlearn.command_options import member_names
from peerlearn.safe_write import check_writable, write_file
from peerlearn.run_files import evaluation_name

SPLITS = ("train", "val", "test")
COHORT = "cohort"


def split_stream(run, split: str) -> BatchStream:
    """An unshuffled, un-augmented stream over the run's ``split`` ('train', 'val' or 'test')."""
    return run.stream(split)


def select_members(run, members: Sequence[str] | None) -> list[str]:
    """The named members (all when None); an unknown name is an error listing the run's members."""
    return run.select(members)


def ensemble_members(run, names: Sequence[str]) -> list[str]:
    """Members averaged into the ensemble: the run's recorded ensemble (its students) among ``names``."""
    return run.ensemble_of(names)


def metrics_of(log_probs: torch.Tensor, labels: torch.Tensor, class_names) -> dict[str, Any]:
    """Classification metrics ranked on log-probabilities (no ties where probabilities underflow)."""
    return classification_metrics(log_probs.exp(), labels, class_names, log_probs=log_probs)


def classification_section(run, split: str, names: Sequence[str], progress: Mode = "off") -> dict[str, Any] | None:
    """Classification metrics of every member and the ensemble on ``split`` (None when it has no labelled item)."""
    return classification_scores(run, split_stream(run, split), names, progress=progress)


def classification_scores(run, stream: BatchStream, names: Sequence[str], progress: Mode = "off"
                          ) -> dict[str, Any] | None:
    """Classification metrics of every member and the ensemble on the items of ``stream`` (None when none
    is labelled); ``peerlearn sql``'s TO EVALUATE scores a query's rows with it."""
    if int((stream.split.y >= 0).sum()) == 0:
        return None
    logits, labels = predict(run.cohort, stream, names, progress=progress)  # each participant's predictor
    class_names = run.class_names
    result = {name: metrics_of(F.log_softmax(z, dim=1), labels, class_names) for name, z in logits.items()}
    averaged = ensemble_members(run, names)
    if len(averaged) > 1:
        result[ENSEMBLE] = metrics_of(ensemble_log_probs([logits[n] for n in averaged]), labels, class_names)
    return result


def retrieval_section(run, names: Sequence[str], ranks: Sequence[int] = DEFAULT_RANKS, progress: Mode = "off"
                      ) -> dict[str, Any] | None:
    """CMC / mAP of each member's features and of the cohort's concatenated features (None without query/gallery)."""
    parts = run.data.retrieval
    if not {"query", "gallery"} <= set(parts):
        return None
    features = {}
    for key in ("query", "gallery"):
        part = parts[key]
        stream = run.stream_of(Split(part.x, part.identities))
        features[key] = predict_with_features(run.cohort, stream, names, progress=progress)[1]
    query, gallery = parts["query"], parts["gallery"]

    def score(q, g):
        return retrieval_metrics(q, query.identities, query.cameras, g, gallery.identities, gallery.cameras, ranks)

    result = {name: score(features["query"][name], features["gallery"][name]) for name in names}
    averaged = ensemble_members(run, names)
    if len(averaged) > 1:
        result[COHORT] = score(concatenate_features([features["query"][n] for n in averaged]),
                               concatenate_features([features["gallery"][n] for n in averaged]))
        result[COHORT]["members"] = averaged
    return {"query_items": len(query), "gallery_items": len(gallery), "scores": result}


def evaluate_run(run_dir: str | Path, split: str = "test", members: Sequence[str] | None = None,
                 device: str = "cpu", save: bool = True, data: Any = None,
                 label_column: str | None = None, trust_code: bool = False, progress: Mode = "auto"
                 ) -> dict[str, Any]:
    """Evaluate a finished run: classification metrics on ``split`` and, on re-id runs, retrieval metrics.

    ``data`` scores the run on other labelled data instead of a split of its own (``split`` is then
    ``"data"``): a folder of images with one subfolder per class, a CSV file with the run's feature columns
    and a label column (``label_column``, default the run's), a pair ``(x, y)`` or a torch Dataset; the
    inputs go through the run's preprocessing (``peerlearn.predict.labelled_inputs``). Saved as
    ``RUN_DIR/evaluation_data.json`` (with ``data``: where the items came from).

    Returns (and saves as ``RUN_DIR/evaluation_<split>.json``)::

        {"run_dir", "split", "items", "class_names", "members": [...],
         "classification": {member or "ensemble": {top1, top5, nll, macro_f1, roc_auc_macro,
                                                   per_class: [...], confusion: [[...]]}} or None,
         "retrieval": {"query_items", "gallery_items",
                       "scores": {member or "cohort": {cmc: {rank1, rank5, rank10}, map, queries, skipped}}} or None}

    ``trust_code``: see ``peerlearn.load_run``. ``progress``: a bar over the batches on a terminal, a line every
    few seconds off it (``peerlearn.progress``).
    """
    from peerlearn.api import load_run

    if data is not None:
        return evaluate_on_data(run_dir, data, members, device, save, label_column, trust_code, progress)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; allowed: {', '.join(SPLITS)}.")
    member_names(members)
    if save:
        check_writable(run_dir)  # before the work, not after it
    run = load_run(run_dir, device=device, command="evaluate", trust_code=trust_code)
    data = run.data
    names = select_members(run, members)
    result = {
        "run_dir": str(run_dir),
        "split": split,
        "items": len(getattr(data, split)),
        "class_names": run.class_names,
        "members": names,
        "classification": classification_section(run, split, names, progress=progress),
        "retrieval": retrieval_section(run, names, progress=progress),
    }
    if save:
        write_file(Path(run_dir) / evaluation_name(split), json.dumps(result, indent=2), root=run_dir,
                   what="the evaluation")
    return result


def evaluate_on_data(run_dir: str | Path, data: Any, members: Sequence[str] | None = None, device: str = "cpu",
                     save: bool = True, label_column: str | None = None, trust_code: bool = False,
                     progress: Mode = "auto") -> dict[str, Any]:
    """``evaluate_run`` on labelled data that is not one of the run's splits (see there)."""
    from peerlearn.api import load_run
    from peerlearn.predict import labelled_inputs

    member_names(members)
    if save:
        check_writable(run_dir)  # before the work, not after it
    run = load_run(run_dir, device=device, command="evaluate", trust_code=trust_code)
    names = select_members(run, members)
    x, y, where = labelled_inputs(run, data, label_column)
    result = {
        "run_dir": str(run_dir),
        "split": "data",
        "data": where,
        "items": len(y),
        "class_names": run.class_names,
        "members": names,
        "classification": classification_scores(run, run.stream_of(Split(x, y)), names, progress=progress),
        "retrieval": None,
    }
    if save:
        write_file(Path(run_dir) / evaluation_name("data"), json.dumps(result, indent=2), root=run_dir,
                   what="the evaluation")
    return result
