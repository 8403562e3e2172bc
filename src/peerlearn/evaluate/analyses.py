"""The analyses of the DML paper, for any trained cohort.

* posterior entropy: mean over items of H(p(x)) = −Σ_m p_m log p_m (nats). DML members end with
  higher entropy (softer, less over-confident posteriors) than independently trained ones.
* flatness probe: add Gaussian noise of std σ to every parameter, measure the mean training loss;
  repeat for several draws. A loss that rises less with σ indicates a wider minimum.
* rank mass: the average probability at rank 1..k of the sorted posterior (top-5 mass).
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from peerlearn.data.batches import BatchStream
from peerlearn.engine.cohort import Cohort
from peerlearn.engine.evaluation import predict
from peerlearn.losses import entropy
from peerlearn.progress import Mode, progress_bar


def item_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Posterior entropy H(softmax(z)) = −Σ_m p_m log p_m in nats of every item (a vector [N])."""
    return entropy(F.softmax(logits.float(), dim=1))


def posterior_entropy(cohort: Cohort, stream: BatchStream, names: Iterable[str] | None = None,
                      progress: Mode = "auto") -> dict[str, float]:
    """Mean posterior entropy (nats) of each member on every item of ``stream``."""
    names = list(names or cohort.evaluable)
    logits, _ = predict(cohort, stream, names, progress=progress)
    return {name: float(item_entropy(z).mean()) for name, z in logits.items()}


def rank_mass(cohort: Cohort, stream: BatchStream, names: Iterable[str] | None = None,
              k: int = 5, progress: Mode = "auto") -> dict[str, list[float]]:
    """Average probability mass at ranks 1..k of each member's sorted posterior."""
    names = list(names or cohort.evaluable)
    logits, _ = predict(cohort, stream, names, progress=progress)
    result = {}
    for name, z in logits.items():
        sorted_probs = F.softmax(z, dim=1).sort(dim=1, descending=True).values
        result[name] = sorted_probs[:, : min(k, z.shape[1])].mean(0).tolist()
    return result


@torch.no_grad()
def mean_loss(model: torch.nn.Module, stream: BatchStream) -> float:
    """Mean cross-entropy of ``model`` (eval mode) over the labelled items of ``stream``."""
    total, count = 0.0, 0
    for _, batch in stream.epoch(0):
        keep = batch.y >= 0
        if not bool(keep.any()):
            continue
        total += float(F.cross_entropy(model(batch.x[keep]), batch.y[keep], reduction="sum"))
        count += int(keep.sum())
    return total / max(count, 1)


@torch.no_grad()
def flatness(model: torch.nn.Module, stream: BatchStream, sigmas: Sequence[float] = (0.0, 0.01, 0.02, 0.05),
             draws: int = 3, seed: int = 0, progress: Mode = "auto",
             desc: str = "flatness") -> dict[float, dict[str, float]]:
    """Training loss after adding N(0, σ²) noise to every parameter: mean and std over ``draws``.

    The model is copied; its weights are never changed. BatchNorm statistics are kept as trained.
    ``progress`` shows a bar over the noisy evaluations (``auto``: only on a terminal).
    """
    noisy = copy.deepcopy(model).eval()
    original = [p.detach().clone() for p in noisy.parameters()]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    curve: dict[float, dict[str, float]] = {}
    bar = progress_bar(total=sum(1 if sigma == 0 else draws for sigma in sigmas), desc=desc, mode=progress)
    for sigma in sigmas:
        losses = []
        for _ in range(1 if sigma == 0 else draws):
            for param, base in zip(noisy.parameters(), original):
                noise = torch.randn(base.shape, generator=generator) * sigma
                param.copy_(base + noise.to(base.device))
            losses.append(mean_loss(noisy, stream))
            bar.update(1)
        values = torch.tensor(losses)
        curve[float(sigma)] = {"mean": float(values.mean()),
                               "std": float(values.std()) if len(losses) > 1 else 0.0}
    bar.close()
    return curve


def cohort_flatness(cohort: Cohort, stream: BatchStream, sigmas: Sequence[float] = (0.0, 0.01, 0.02, 0.05),
                    draws: int = 3, seed: int = 0, names: Iterable[str] | None = None,
                    progress: Mode = "auto") -> dict[str, dict]:
    """``flatness`` for each named member (default: every member): of what gives its logits (``predictor``: the
    network itself, a branch with its trunk, an auxiliary module's predictions with the modules they read)."""
    return {name: flatness(cohort[name].predictor, stream, sigmas, draws, seed, progress=progress,
                           desc=f"flatness {name}")
            for name in (names or cohort.evaluable)}
