"""Logits and penultimate features of cohort members on every item of a stream, in order."""

from __future__ import annotations

from typing import Iterable

import torch

from peerlearn.data.batches import BatchStream
from peerlearn.engine.cohort import Cohort
from peerlearn.errors import PeerlearnError
from peerlearn.progress import Mode, progress_bar


@torch.inference_mode()
def predict_with_features(cohort: Cohort, stream: BatchStream, names: Iterable[str], progress: Mode = "off"
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """(logits per member, features per member, labels) on CPU, all members in eval mode.

    ``progress``: ``train.progress`` mode of a bar over the batches (``auto``: only on a terminal)."""
    names = list(names)
    for name in names:
        if cohort[name].predictor is None:
            raise PeerlearnError(f"{name!r} gives no logits of its own (a multi-branch network or an auxiliary "
                                 "module without predictions).")
        if cohort[name].kind != "auxiliary" and not hasattr(cohort[name].predictor, "forward_with_features"):
            raise PeerlearnError(f"Member {name!r} has no penultimate features (its model does not implement "
                                 "forward_with_features).")
    was_training = {m.name: m.model.training for m in cohort}
    cohort.eval()
    logits = {name: [] for name in names}
    features = {name: [] for name in names}
    labels = []
    try:
        for _, batch in progress_bar(stream.epoch(0), total=len(stream), desc="features", mode=progress):
            for name in names:
                z, f = _logits_and_features(cohort[name].predictor, batch.x)
                logits[name].append(z.float().cpu())
                features[name].append(f.float().flatten(1).cpu())
            labels.append(batch.y.cpu())
    finally:
        for member in cohort:
            member.model.train(was_training[member.name])
    if not labels:
        empty = torch.zeros(0)
        return {n: empty for n in names}, {n: empty for n in names}, torch.zeros(0, dtype=torch.int64)
    return ({n: torch.cat(v) for n, v in logits.items()}, {n: torch.cat(v) for n, v in features.items()},
            torch.cat(labels))


def _logits_and_features(predictor: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A participant's logits and penultimate features; a predicting auxiliary module without features of its own
    (a gated ensemble of branches) gives its logits as its features."""
    if hasattr(predictor, "forward_with_features"):
        return predictor.forward_with_features(x)
    logits = predictor(x)
    return logits, logits
