"""Everything the report shows about one finished run, computed without plotting.

From the run directory: ``summary.json`` (final scores), ``metrics.jsonl`` (learning curves).
From the final weights, on the chosen split: each member's and the ensemble's confusion matrix,
each member's per-item posterior entropy, the flatness curve on training items, and a t-SNE map
of the penultimate features of up to two members. Every number comes from the functions behind
`peerlearn evaluate` / `peerlearn analyze` (``peerlearn.evaluate``), so the report agrees with them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peerlearn.api import SUMMARY_NAME, load_run
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.engine.tracking import read_metrics
from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.evaluate.analyses import cohort_flatness, item_entropy
from peerlearn.evaluate.embedding import tsne_coordinates
from peerlearn.evaluate.features import predict_with_features
from peerlearn.evaluate.metrics import confusion_matrix
from peerlearn.evaluate.similarity import cka_matrix
from peerlearn.progress import Mode, progress_bar
from peerlearn.run_checks import check_summary
from peerlearn.trust import read_records

SPLITS = ("train", "val", "test")


class ReportOptionError(PeerlearnError):
    """A report option out of range (exit 2, like any bad input)."""

    exit_code = 2


@dataclass
class ReportOptions:
    """How much of each run the report analyses (defaults: a few seconds per run for small models)."""

    split: str = "test"  # confusion matrix, entropy and t-SNE
    limit: Optional[int] = None  # first N items of ``split`` (None: the whole split)
    flatness_split: str = "train"
    flatness_items: int = 1000
    sigmas: Sequence[float] = (0.0, 0.01, 0.02, 0.05)
    draws: int = 2
    tsne_items: int = 500
    tsne_members: Optional[Sequence[str]] = None  # default: the first two trainable members
    seed: int = 0
    progress: Mode = "auto"

    def check(self) -> None:
        """Every option (exit 2 naming it as typed, e.g. --tsne-items), before any run is read."""
        from peerlearn import command_options as options
        from peerlearn.errors import ConfigError

        try:
            for key in ("split", "flatness_split"):
                options.choice(getattr(self, key), key, SPLITS)
            for key in ("limit", "flatness_items", "tsne_items", "draws"):
                options.integer_at_least(getattr(self, key), key, 1, allow_none=key == "limit")
            options.finite_numbers(self.sigmas, "sigmas", low=0.0)
            options.member_names(self.tsne_members, "tsne_member")
            options.integer_at_least(self.seed, "seed", 0)
            if self.progress not in ("auto", "on", "off", True, False, None):
                options.choice(self.progress, "progress", ("auto", "on", "off"))
        except ConfigError as error:
            raise ReportOptionError(str(error)) from None


@dataclass
class RunData:
    run_dir: Path
    label: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    class_names: list[str]
    split: str
    items: int
    confusion: dict[str, torch.Tensor] = field(default_factory=dict)  # member or ensemble -> counts
    entropy: dict[str, torch.Tensor] = field(default_factory=dict)  # member -> per-item entropy
    flatness: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)
    flatness_items: int = 0
    tsne: dict[str, np.ndarray] = field(default_factory=dict)  # member -> [N, 2]
    tsne_labels: Optional[np.ndarray] = None
    models: dict[str, str] = field(default_factory=dict)  # member -> model name
    split_items: int = 0  # items in the whole split (``items`` may be the first ``limit`` of them)
    cka: dict[str, dict[str, float]] = field(default_factory=dict)  # linear CKA between members' features


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json, checked against its recorded hash (peerlearn.trust) and its shape (exit 2 otherwise)."""
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        raise PeerlearnError(f"{str(run_dir)!r} has no {SUMMARY_NAME}: it is not a finished peerlearn run "
                             "(finish it with `peerlearn train --resume RUN_DIR`).")
    read_records(run_dir).check(SUMMARY_NAME)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read {str(path)!r}: {error}; it is damaged. Restore a good copy of the run.") \
            from None
    check_summary(summary, path)
    return summary


def collect_run(run_dir: str | Path, options: ReportOptions, trust_code: bool = False) -> RunData:
    """Read and compute what the report shows about the run in ``run_dir`` (``trust_code``: see
    ``peerlearn.load_run``)."""
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY_NAME).is_file():
        read_summary(run_dir)  # the message for an unfinished run
    run = load_run(run_dir, command="report", trust_code=trust_code)
    summary = read_summary(run_dir)
    config, data, cohort = run.config, run.data, run.cohort
    names = cohort.evaluable  # what gives logits (a multi-branch network predicts through its branches)
    trainable = run.ensemble or [n for n, role in run.roles.items() if role == "student"] or names
    stream = run.stream(options.split, options.limit)
    if len(stream.split) == 0:
        raise PeerlearnError(f"The {options.split} split of {str(run_dir)!r} is empty; choose another with --split.")
    result = RunData(run_dir, run_dir.name, summary, read_metrics(run_dir), list(data.class_names),
                     options.split, len(stream.split))
    result.models = {m.name: m.info["network"].get("model", m.info["network"]["kind"]) for m in cohort}
    result.split_items = len(run.split(options.split))
    chosen = list(options.tsne_members or trainable[:2])
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ReportOptionError(f"The run {str(run_dir)!r} has no member {unknown[0]!r}; it has: {', '.join(names)}.")

    logits, features, labels = predict_with_features(cohort, stream, names, progress=options.progress)
    if len(names) > 1:
        result.cka = cka_matrix({n: features[n] for n in names}, names)
    for name, z in logits.items():
        result.confusion[name] = torch.from_numpy(confusion_matrix(labels, z.argmax(1), data.num_classes))
        result.entropy[name] = item_entropy(z)
    if len(trainable) > 1:
        mean_probs = torch.stack([F.softmax(logits[n], dim=1) for n in trainable]).mean(0)
        result.confusion[ENSEMBLE] = torch.from_numpy(confusion_matrix(labels, mean_probs.argmax(1),
                                                                       data.num_classes))

    flat_stream = run.stream(options.flatness_split, options.flatness_items)
    result.flatness_items = len(flat_stream.split)
    if result.flatness_items:
        result.flatness = cohort_flatness(cohort, flat_stream, options.sigmas, options.draws, seed=options.seed,
                                          names=trainable, progress=options.progress)

    keep = min(options.tsne_items, len(labels))  # the first items of the analysed split
    if keep >= 5:
        threads = config.train.threads or 1
        result.tsne = {name: tsne_coordinates(features[name][:keep], seed=options.seed, threads=threads)
                       for name in progress_bar(chosen, desc="t-SNE", mode=options.progress)}
        result.tsne_labels = labels[:keep].numpy()
    return result
