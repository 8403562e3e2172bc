"""t-SNE maps of members' penultimate features, kept as data so that a report can draw them.

t-SNE (van der Maaten & Hinton 2008) places the N items in 2-D so that the neighbour probabilities
q_ij ∝ (1 + ‖y_i − y_j‖²)⁻¹ match the Gaussian neighbour probabilities p_ij of the features (perplexity sets
the Gaussian widths), by minimising KL(P ‖ Q). Each member is embedded on its own (members may have feature
spaces of different sizes), from the same items, with the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from peerlearn.evaluate.metrics import as_numpy
from peerlearn.safe_write import write_file
from peerlearn.run_files import TSNE_NAME

TSNE_FILE = TSNE_NAME


def tsne_coordinates(features, perplexity: float = 30.0, seed: int = 0, threads: int | None = 1) -> np.ndarray:
    """2-D t-SNE coordinates [N, 2] of features [N, D] (PCA initialisation; perplexity capped at (N − 1)/3).

    ``threads`` caps the OpenMP/BLAS threads for the call (None: the libraries' default). One thread is the
    default: a map of a few thousand points takes seconds, while oversubscribed threads on a busy machine can
    make it many times slower.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = as_numpy(features).astype(np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"t-SNE needs features [N, D] with N >= 4, got shape {x.shape}")
    perplexity = float(min(perplexity, (len(x) - 1) / 3))
    with threadpool_limits(limits=threads):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_embedding(features: Mapping[str, Any], labels, names: Sequence[str] | None = None,
                   perplexity: float = 30.0, seed: int = 0, class_names: Sequence[str] | None = None,
                   threads: int | None = 1) -> dict[str, Any]:
    """t-SNE of each named member's features of the same items: coordinates per member and the items' labels."""
    names = list(names or features)
    labels = as_numpy(labels).astype(np.int64)
    return {
        "members": names,
        "coordinates": {name: tsne_coordinates(features[name], perplexity, seed, threads).round(5).tolist() for name in names},
        "labels": labels.tolist(),
        "class_names": list(class_names) if class_names is not None else None,
        "perplexity": float(min(perplexity, (len(labels) - 1) / 3)),
        "seed": seed,
    }


def save_embedding(embedding: dict[str, Any], run_dir: str | Path) -> Path:
    """Write the embedding as ``RUN_DIR/tsne.json``; return its path."""
    return write_file(Path(run_dir) / TSNE_FILE, json.dumps(embedding), root=run_dir, what="the t-SNE map")


def load_embedding(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/tsne.json`` back (coordinates as numpy arrays)."""
    embedding = json.loads((Path(run_dir) / TSNE_FILE).read_text())
    embedding["coordinates"] = {k: np.asarray(v) for k, v in embedding["coordinates"].items()}
    embedding["labels"] = np.asarray(embedding["labels"])
    return embedding
