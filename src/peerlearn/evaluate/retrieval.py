"""Retrieval metrics for re-identification: CMC rank-k and mAP, with the Market-1501 protocol.

Every query q (identity id_q, camera cam_q) ranks the gallery by distance between features (ascending,
ties kept in gallery order). Before scoring, the Market-1501 protocol removes from q's ranking:

* junk images: gallery identity −1 (detector boxes too poor to count either way);
* images of the same identity taken by the same camera (finding them is trivial, not re-identification).

Distractors (identity 0, ``0000_...``) stay in the gallery as negatives. The matches ("good" images) are
the remaining gallery images of identity id_q. With the hits of q at positions r_1 < r_2 < ... < r_G
(1-based, in the ranking after removal):

* CMC(k) = (1/Q) Σ_q [r_1(q) ≤ k]      (the rank-k accuracy, e.g. rank-1, rank-5, rank-10);
* AP(q)  = (1/G) Σ_j j / r_j           (mean of the precision at each hit);  mAP = (1/Q) Σ_q AP(q).

Queries without any good image cannot be scored and are left out (counted in ``skipped``).
AP is the usual non-interpolated average precision (as scikit-learn's); the original Market-1501 MATLAB
script averages the precision just before and at each hit instead, which gives slightly higher values.

Features are L2-normalised before the Euclidean distance by default (the same ranking as cosine similarity).
A cohort retrieves with the concatenation of its members' L2-normalised features, so every member weighs equally.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from peerlearn.evaluate.metrics import as_numpy

JUNK_IDENTITY = -1
DISTRACTOR_IDENTITY = 0
DEFAULT_RANKS = (1, 5, 10)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows divided by their Euclidean norm (zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def concatenate_features(features: Mapping[str, Any] | Sequence[Any]) -> np.ndarray:
    """The cohort's retrieval feature: each member's features L2-normalised, then concatenated."""
    parts = list(features.values()) if isinstance(features, Mapping) else list(features)
    return np.concatenate([l2_normalise(as_numpy(f).astype(np.float64)) for f in parts], axis=1)


def squared_distances(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """‖q − g‖² for every pair, as ‖q‖² + ‖g‖² − 2 q·g (clipped at 0)."""
    dots = query @ gallery.T
    return np.maximum((query ** 2).sum(1)[:, None] + (gallery ** 2).sum(1)[None, :] - 2 * dots, 0.0)


def score_query(distances: np.ndarray, query_id: int, query_cam: int, gallery_ids: np.ndarray,
                gallery_cams: np.ndarray) -> tuple[float, int] | None:
    """(AP, rank of the first hit, 1-based) of one query, or None when it has no good gallery image."""
    order = np.argsort(distances, kind="stable")
    ids, cams = gallery_ids[order], gallery_cams[order]
    junk = (ids == JUNK_IDENTITY) | ((ids == query_id) & (cams == query_cam))
    good = (ids == query_id)[~junk]
    hit_ranks = np.flatnonzero(good) + 1
    if len(hit_ranks) == 0:
        return None
    precision_at_hits = np.arange(1, len(hit_ranks) + 1) / hit_ranks
    return float(precision_at_hits.mean()), int(hit_ranks[0])


def retrieval_metrics(query_features, query_ids, query_cams, gallery_features, gallery_ids, gallery_cams,
                      ranks: Sequence[int] = DEFAULT_RANKS, normalise: bool = True,
                      chunk: int = 256) -> dict[str, Any]:
    """CMC at ``ranks`` and mAP of the queries against the gallery (Market-1501 protocol, module docstring).

    Returns ``{"cmc": {"rank1": ..., "rank5": ..., ...}, "map": ..., "queries": scored, "skipped": unscored}``.
    """
    query, gallery = (as_numpy(f).astype(np.float64) for f in (query_features, gallery_features))
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery features must be [N, D] with the same D; got {query.shape} and {gallery.shape}")
    if normalise:
        query, gallery = l2_normalise(query), l2_normalise(gallery)
    q_ids, q_cams = as_numpy(query_ids).astype(np.int64), as_numpy(query_cams).astype(np.int64)
    g_ids, g_cams = as_numpy(gallery_ids).astype(np.int64), as_numpy(gallery_cams).astype(np.int64)
    aps, first_hits = [], []
    for start in range(0, len(query), chunk):  # bounded memory: chunk x gallery distances at a time
        distances = squared_distances(query[start:start + chunk], gallery)
        for row, i in enumerate(range(start, min(start + chunk, len(query)))):
            scored = score_query(distances[row], q_ids[i], q_cams[i], g_ids, g_cams)
            if scored is not None:
                aps.append(scored[0])
                first_hits.append(scored[1])
    first = np.asarray(first_hits)
    scored = len(first)
    return {
        "cmc": {f"rank{k}": float((first <= k).mean()) if scored else float("nan") for k in ranks},
        "map": float(np.mean(aps)) if scored else float("nan"),
        "queries": scored,
        "skipped": int(len(query) - scored),
    }
