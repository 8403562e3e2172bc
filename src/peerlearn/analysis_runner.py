"""Run the paper's analyses on a finished run directory (used by `peerlearn analyze`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from peerlearn import command_options as options
from peerlearn.api import load_run
from peerlearn.data.batches import BatchStream
from peerlearn.evaluate.analyses import cohort_flatness, posterior_entropy, rank_mass
from peerlearn.evaluate.embedding import save_embedding, tsne_embedding
from peerlearn.evaluate.features import predict_with_features
from peerlearn.evaluate.similarity import cka_matrix
from peerlearn.evaluate.streams import analysis_stream  # noqa: F401  (also imported from here)
from peerlearn.progress import Mode, progress_bar
from peerlearn.safe_write import check_writable, write_file
from peerlearn.run_files import ANALYSIS_NAME

DEFAULT_SIGMAS = (0.0, 0.005, 0.01, 0.02, 0.05)
DEFAULT_TSNE_ITEMS = 1000


def feature_analyses(run, stream: BatchStream, names: Sequence[str], tsne_items: int = DEFAULT_TSNE_ITEMS,
                     perplexity: float = 30.0, seed: int = 0, progress: Mode = "off") -> tuple[dict, dict | None]:
    """Linear CKA between every pair of members, and the t-SNE of the first two members' features
    on the first ``tsne_items`` items of ``stream`` (None when ``tsne_items`` is 0)."""
    _, features, labels = predict_with_features(run.cohort, stream, names, progress=progress)
    cka = cka_matrix(features, names)
    embedding = None
    if tsne_items and len(labels) >= 4:
        keep = min(tsne_items, len(labels))
        with progress_bar(total=1, desc=f"t-SNE of {', '.join(names[:2])} ({keep} items)", unit="maps",
                          mode=progress) as bar:
            embedding = tsne_embedding({n: features[n][:keep] for n in names[:2]}, labels[:keep], names[:2],
                                       perplexity=perplexity, seed=seed, class_names=run.class_names,
                                       threads=run.config.train.threads or 1)
            bar.update(1)
    return cka, embedding


def check_analysis_options(split: str, sigmas: Sequence[float], draws: int, limit: int | None,
                           members: Sequence[str] | None, tsne_items: int, perplexity: float) -> None:
    """Each option in its range (ConfigError, exit 2, naming it): ``--limit``, ``--draws`` ≥ 1,
    ``--tsne-items`` ≥ 0, ``--perplexity`` > 0, ``--sigmas`` finite and ≥ 0."""
    options.choice(split, "split", ("train", "val", "test"))
    options.finite_numbers(sigmas, "sigmas", low=0.0)
    options.integer_at_least(draws, "draws", 1)
    options.integer_at_least(limit, "limit", 1, allow_none=True)
    options.member_names(members)
    options.integer_at_least(tsne_items, "tsne_items", 0)
    options.finite_number(perplexity, "perplexity", 0.0, open_low=True)


def analyze_run(run_dir: str | Path, split: str = "train", sigmas: Sequence[float] = DEFAULT_SIGMAS,
                draws: int = 3, limit: int | None = 5000, members: Sequence[str] | None = None,
                tsne_items: int = DEFAULT_TSNE_ITEMS, perplexity: float = 30.0,
                trust_code: bool = False, progress: Mode = "auto") -> dict[str, Any]:
    """Posterior entropy, rank-1..5 mass, the flatness curve of every member, linear CKA between members'
    features and a t-SNE map of two members' features; saved as analysis.json (the map as tsne.json).
    ``trust_code``: see ``peerlearn.load_run``. ``progress``: bars on a terminal, a line every few seconds
    off it (``peerlearn.progress``)."""
    check_analysis_options(split, sigmas, draws, limit, members, tsne_items, perplexity)
    check_writable(run_dir)  # before the work, not after it
    run = load_run(run_dir, command="analyze", trust_code=trust_code)
    names = run.select(members)
    stream = analysis_stream(run, split, limit)
    cka, embedding = feature_analyses(run, stream, names, tsne_items, perplexity, seed=run.config.seed,
                                      progress=progress)
    result = {
        "split": split,
        "items": len(stream.split),
        "entropy": posterior_entropy(run.cohort, stream, names, progress=progress),
        "rank_mass": rank_mass(run.cohort, stream, names, progress=progress),
        "flatness": cohort_flatness(run.cohort, stream, sigmas, draws, seed=run.config.seed, names=names,
                                    progress=progress),
        "cka": cka,
        "tsne": None,
    }
    if embedding is not None:
        path = save_embedding(embedding, run_dir)
        result["tsne"] = {"file": str(path), "members": embedding["members"], "items": len(embedding["labels"])}
    write_file(Path(run_dir) / ANALYSIS_NAME, json.dumps(result, indent=2), root=run_dir, what="the analyses")
    return result
