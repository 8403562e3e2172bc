"""Linear separability by depth: a linear probe on every block's spatially averaged features.

For depth d (0 = the input, d = j + 1 the output x_{j+1} of block j) the features of an item are

    φ_d(x) = flatten(AvgPool_{p×p}(x_d)),      (p = 2 by default, as in the auxiliary heads)

standardised with the training items' mean and std, and a multinomial logistic regression
(L2 penalty 1/C) is fitted on the training items and scored on them and on the held-out split.
Greedy layerwise training should make the classes more linearly separable with every block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from peerlearn.data.batches import BatchStream
from peerlearn.errors import ConfigError, PeerlearnError


MAX_POOL = 64


@torch.no_grad()
def depth_features(model: torch.nn.Module, stream: BatchStream, pool: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """[φ_0, φ_1, ..., φ_J] for every labelled item of ``stream``, and their labels."""
    if not hasattr(model, "block_outputs"):
        raise PeerlearnError(f"The separability probe needs a network of blocks (layerwise_cnn); "
                             f"{type(model).__name__} has no block_outputs.")
    was_training = model.training
    model.eval()
    per_depth: list[list[torch.Tensor]] = []
    labels = []
    for _, batch in stream.epoch(0):
        keep = batch.labelled
        maps = [batch.x[keep], *model.block_outputs(batch.x[keep])]
        if not per_depth:
            per_depth = [[] for _ in maps]
        for store, x in zip(per_depth, maps):
            store.append(F.adaptive_avg_pool2d(x, pool).flatten(1).float().cpu())
        labels.append(batch.y[keep].cpu())
    model.train(was_training)
    return [torch.cat(f).numpy() for f in per_depth], torch.cat(labels).numpy()


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     C: float = 1.0, max_iter: int = 500, seed: int = 0) -> dict[str, float]:
    """Train and test accuracy of a standardised multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    probe.fit(train_x, train_y)
    return {"train": float(probe.score(train_x, train_y)), "test": float(probe.score(test_x, test_y))}


def separability_by_depth(model: torch.nn.Module, train_stream: BatchStream, test_stream: BatchStream,
                          pool: int = 2, C: float = 1.0, max_iter: int = 500) -> list[dict[str, Any]]:
    """One row per depth: its name, feature size, probe train and test accuracy."""
    train_feats, train_y = depth_features(model, train_stream, pool)
    test_feats, test_y = depth_features(model, test_stream, pool)
    rows = []
    for depth, (tr, te) in enumerate(zip(train_feats, test_feats)):
        scores = fit_linear_probe(tr, train_y, te, test_y, C=C, max_iter=max_iter)
        rows.append({"depth": depth, "name": "input" if depth == 0 else f"block{depth - 1}",
                     "features": int(tr.shape[1]), **scores})
    return rows


def probe_run(run_dir: str | Path, member: Optional[str] = None, split: str = "test", limit: Optional[int] = 5000,
              pool: int = 2, C: float = 1.0, max_iter: int = 500, trust_code: bool = False) -> dict[str, Any]:
    """The separability table of a finished run's member (first by default); saved as probe.json.

    The probe is fitted on the first ``limit`` training items and scored on ``split`` ('val' or 'test').
    ``trust_code``: see ``peerlearn.load_run``.
    """
    from peerlearn import command_options as options
    from peerlearn.api import load_run
    from peerlearn.safe_write import check_writable, write_file

    options.choice(split, "split", ("val", "test"))
    options.integer_at_least(limit, "limit", 1, allow_none=True)
    options.integer_at_least(pool, "pool", 1)
    if pool > MAX_POOL:  # the features grow as channels × pool²
        raise ConfigError(f"--pool must be at most {MAX_POOL}, got {pool}.")
    options.finite_number(C, "C", 0.0, open_low=True)
    options.integer_at_least(max_iter, "max_iter", 1)
    if member is not None:
        options.member_names([member])
    check_writable(run_dir)  # before the work, not after it
    run = load_run(run_dir, command="probe", trust_code=trust_code)
    names = run.cohort.names
    name = member or names[0]
    if name not in names:
        raise ConfigError(f"The run has no member {name!r}; its members: {', '.join(names)}.")
    if len(run.split(split)) == 0:
        raise PeerlearnError(f"The run's {split} split is empty; score the probe on the other split.")
    rows = separability_by_depth(run.cohort[name].model, run.stream("train", limit), run.stream(split),
                                 pool=pool, C=C, max_iter=max_iter)
    result = {"member": name, "split": split, "pool": pool, "C": C, "train_items": limit, "depths": rows}
    write_file(Path(run_dir) / "probe.json", json.dumps(result, indent=2), root=run_dir, what="the probe's table")
    return result
