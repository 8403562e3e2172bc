"""Evaluate members and the cohort ensemble on a split: top-1 / top-5 accuracy and loss."""

from __future__ import annotations

import math
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
    was_training = {m.name: m.model.training for m in cohort if m.kind != "view"}
    cohort.eval()
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels = []
    for _, batch in progress_bar(stream.epoch(0), total=len(stream), desc="predict", mode=progress):
        for name in names:
            logits[name].append(cohort[name].predictor(batch.x).float().cpu())
        labels.append(batch.y.cpu())
    for member in cohort:
        if member.name in was_training:
            member.model.train(was_training[member.name])
    return {n: torch.cat(v) for n, v in logits.items()}, torch.cat(labels)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of labelled items (label ≥ 0) whose label is among the k highest ``scores`` (NaN without any).

    The one top-k of peerlearn (training's evaluations and `peerlearn evaluate` alike). Give logits or
    log-probabilities, not probabilities: probabilities far below the top underflow to exactly 0, and the
    order among those ties would decide top-5. Equal scores rank by class index (lowest first), like argmax.
    """
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep].long()
    if len(labels) == 0:
        return float("nan")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :min(k, scores.shape[1])]
    return float((order == labels[:, None]).any(1).double().mean())


def ensemble_log_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean of the members' probabilities, log(1/M · Σ_m softmax(z_m)), computed as
    logsumexp_m(log_softmax(z_m)) − log M (no underflow: classes keep their order far below the top)."""
    stacked = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


def score(log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, top5 (when there are ≥ 5 classes) and the negative log-likelihood, from log-probabilities
    (``log_softmax(logits)``, or ``ensemble_log_probs``)."""
    result = {"top1": topk_accuracy(log_probs, labels, 1),
              "nll": float(F.nll_loss(log_probs.float(), labels))}
    if log_probs.shape[1] >= 5:
        result["top5"] = topk_accuracy(log_probs, labels, 5)
    return result


def evaluate_cohort(cohort: Cohort, stream: BatchStream, names: Iterable[str],
                    ensemble: Iterable[str] | None = None, progress: Mode = "auto") -> dict[str, dict[str, float]]:
    """Scores of every named member and of the ensemble (mean of probabilities of ``ensemble``)."""
    names = list(names)
    logits, labels = predict(cohort, stream, names, progress=progress)
    results = {n: score(F.log_softmax(z, dim=1), labels) for n, z in logits.items()}
    ensemble = [n for n in (ensemble if ensemble is not None else names) if n in logits]
    if len(ensemble) > 1:
        results[ENSEMBLE] = score(ensemble_log_probs([logits[n] for n in ensemble]), labels)
    return results
