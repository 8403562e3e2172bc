"""Classification metrics from predicted probabilities and true labels.

With N items, C classes, probabilities P [N, C] and labels y [N] (items with y < 0 are unlabelled and ignored):

* top-k accuracy: (1/N) Σ_i [y_i ∈ the k highest entries of P_i].
* confusion matrix M [C, C]: M[t, p] = #items of true class t predicted (argmax) as p; row-normalised
  R[t, p] = M[t, p] / Σ_p' M[t, p'] (the recall of class t on the diagonal; rows without items stay 0).
* per class c: precision_c = M[c, c] / Σ_t M[t, c] (0 when c is never predicted),
  recall_c = M[c, c] / Σ_p M[c, p] (0 when c has no item), F1_c = 2 P R / (P + R) (0 when P + R = 0).
* macro F1: the mean of F1_c over the classes that occur among the labels or the predictions
  (a class that is neither present nor predicted says nothing about the model and is left out).
* one-vs-rest ROC-AUC of class c: the probability that an item of class c gets a higher score P[·, c]
  than an item of another class (ties count 1/2) = area under the ROC curve of "c vs the rest".
  Undefined (None) for a class without items or without other items; the macro AUC averages the defined ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from peerlearn.engine.evaluation import topk_accuracy as engine_topk


def as_numpy(values) -> np.ndarray:
    """A numpy copy of a numpy array, a list or a (CPU or GPU) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def labelled_only(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """(probs, labels) as float64 / int64 numpy arrays, without the items labelled −1."""
    probs, labels = as_numpy(probs).astype(np.float64), as_numpy(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities must be [N, C] with N = len(labels); got {probs.shape} and {labels.shape}")
    keep = labels >= 0
    return probs[keep], labels[keep]


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of (labelled) items whose label is among the k highest scores (logits or log-probabilities;
    see ``peerlearn.engine.evaluation.topk_accuracy``, which this calls)."""
    scores, labels = labelled_only(scores, labels)
    return engine_topk(torch.from_numpy(scores), torch.from_numpy(labels), k)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """M[t, p] = number of items of true class t predicted as class p (int64 [C, C]); items labelled −1 are
    ignored."""
    labels = as_numpy(labels).astype(np.int64).reshape(-1)
    predictions = as_numpy(predictions).astype(np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    keep = labels >= 0
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels[keep], predictions[keep]), 1)
    return matrix


def row_normalised(matrix) -> np.ndarray:
    """R[t, p] = M[t, p] / Σ_p' M[t, p'] (float64); rows of classes without items stay 0."""
    matrix = as_numpy(matrix).astype(np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def precision_recall_f1(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (items per true class) from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
            "predicted": predicted.astype(np.int64)}


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes present among the labels or the predictions."""
    scores = precision_recall_f1(matrix)
    seen = (scores["support"] > 0) | (scores["predicted"] > 0)
    return float(scores["f1"][seen].mean()) if seen.any() else float("nan")


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC-AUC of ``scores`` for the boolean ``positive`` (Mann–Whitney: P(score⁺ > score⁻) + ½ P(tie))."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


def roc_auc_ovr(probs, labels) -> dict[str, Any]:
    """One-vs-rest ROC-AUC per class (None where undefined) and their macro mean."""
    probs, labels = labelled_only(probs, labels)
    per_class = [binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    defined = [v for v in per_class if v is not None]
    return {"per_class": per_class, "macro": float(np.mean(defined)) if defined else None}


def nll(probs: np.ndarray, labels: np.ndarray, log_probs: np.ndarray | None = None) -> float:
    """Mean −log p(label) over the items (from ``log_probs`` when given, else log of probabilities ≥ 1e-12)."""
    if len(labels) == 0:
        return float("nan")
    rows = np.arange(len(labels))
    if log_probs is not None:
        return float(-log_probs[rows, labels].mean())
    return float(-np.log(np.clip(probs[rows, labels], 1e-12, None)).mean())


def classification_metrics(probs, labels, class_names: Sequence[str] | None = None,
                           auc: bool = True, log_probs=None) -> dict[str, Any]:
    """Everything `peerlearn evaluate` reports for one set of probabilities (JSON-ready).

    With ``log_probs`` (log_softmax of the logits, or the log of an ensemble's mean probability), ranks
    (top-k, ROC-AUC) and the NLL come from them: no tie or log(0) where probabilities underflow."""
    if log_probs is not None:
        log_probs, _ = labelled_only(log_probs, labels)
    probs, labels = labelled_only(probs, labels)
    ranks = log_probs if log_probs is not None else probs
    num_classes = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    predictions = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes)
    scores = precision_recall_f1(matrix)
    result: dict[str, Any] = {
        "items": int(len(labels)),
        "top1": topk_accuracy(ranks, labels, 1),
        "top5": topk_accuracy(ranks, labels, 5) if num_classes >= 5 else None,
        "nll": nll(probs, labels, log_probs),
        "macro_f1": macro_f1(matrix),
    }
    aucs = roc_auc_ovr(ranks, labels) if auc else {"per_class": [None] * num_classes, "macro": None}
    result["roc_auc_macro"] = aucs["macro"]
    result["per_class"] = [
        {"class": names[c], "precision": float(scores["precision"][c]), "recall": float(scores["recall"][c]),
         "f1": float(scores["f1"][c]), "support": int(scores["support"][c]), "roc_auc": aucs["per_class"][c]}
        for c in range(num_classes)
    ]
    result["confusion"] = matrix.tolist()
    return result
