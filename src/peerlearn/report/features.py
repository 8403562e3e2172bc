"""Penultimate features of members and their 2-D t-SNE map, for the report's picture.

t-SNE (van der Maaten & Hinton, 2008) places points y_i in 2-D so that the Student-t similarities
q_ij ∝ (1 + ‖y_i − y_j‖²)⁻¹ match the Gaussian neighbour probabilities p_ij of the features,
minimising KL(P ‖ Q). Distances between far-apart clusters in the map carry little meaning;
how well classes separate does.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from peerlearn.data.batches import BatchStream
from peerlearn.engine.cohort import Cohort
from peerlearn.progress import Mode, progress_bar


@torch.inference_mode()
def member_features(cohort: Cohort, stream: BatchStream, names: Iterable[str],
                    progress: Mode = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Penultimate features (``model.features``) of each named member on every item, and the labels."""
    names = list(names)
    cohort.eval()
    features: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels = []
    for _, batch in progress_bar(stream.epoch(0), total=len(stream), desc="features", mode=progress):
        for name in names:
            features[name].append(cohort[name].model.features(batch.x).float().flatten(1).cpu())
        labels.append(batch.y.cpu())
    return {name: torch.cat(parts) for name, parts in features.items()}, torch.cat(labels)


def tsne_map(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE coordinates [N, 2] of ``features`` [N, D] (PCA initialisation, seeded)."""
    import inspect

    from sklearn.manifold import TSNE

    x = features.double().numpy()
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 items, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)  # scikit-learn requires perplexity < n
    iterations = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"  # sklearn < 1.5
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, **{iterations: 500})
    return tsne.fit_transform(x)
