"""Evaluate members and the cohort ensemble on a split: top-1 / top-5 accuracy and loss."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from peerlearn.data.batches import BatchStream
from peerlearn.engine.cohort import Cohort
from peerlearn.progress import Mode, progress_bar

ENSEMBLE = "ensemble"


@torch.inference_mode()
def predict(cohort: Cohort, stream: BatchStream, names: Iterable[str],
            progress: Mode = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of each named member on every item of ``stream`` (in order), and the labels.

    ``progress``: ``train.progress`` mode of the bar over batches (``auto``: only on a terminal)."""
    names = list(names)
    was_training = {m.name: m.model.training for m in cohort}
    cohort.eval()
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels = []
    for _, batch in progress_bar(stream.epoch(0), total=len(stream), desc="predict", mode=progress):
        for name in names:
            logits[name].append(cohort[name].model(batch.x).float().cpu())
        labels.append(batch.y.cpu())
    for member in cohort:
        member.model.train(was_training[member.name])
    return {n: torch.cat(v) for n, v in logits.items()}, torch.cat(labels)


def topk_accuracy(probs_or_logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of items whose label is among the k highest scores."""
    top = probs_or_logits.topk(min(k, probs_or_logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def score(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 (when there are ≥ 5 classes) and the negative log-likelihood of ``probs``."""
    result = {"top1": topk_accuracy(probs, labels, 1),
              "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))}
    if probs.shape[1] >= 5:
        result["top5"] = topk_accuracy(probs, labels, 5)
    return result


def evaluate_cohort(cohort: Cohort, stream: BatchStream, names: Iterable[str],
                    ensemble: Iterable[str] | None = None, progress: Mode = "auto") -> dict[str, dict[str, float]]:
    """Scores of every named member and of the ensemble (mean of probabilities of ``ensemble``)."""
    names = list(names)
    logits, labels = predict(cohort, stream, names, progress=progress)
    probs = {n: F.softmax(z, dim=1) for n, z in logits.items()}
    results = {n: score(p, labels) for n, p in probs.items()}
    ensemble = [n for n in (ensemble if ensemble is not None else names) if n in probs]
    if len(ensemble) > 1:
        results[ENSEMBLE] = score(torch.stack([probs[n] for n in ensemble]).mean(0), labels)
    return results
