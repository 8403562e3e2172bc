"""Bottleneck features computed once and cached on disk.

The cache key is a SHA-256 over everything the features depend on: the backbone weights and
buffers (names, shapes, bytes), the input sizes the backbones see, each split's stored inputs, and
the preprocessing (normalisation mean/std). A changed weight, image or statistic gives a new key,
so a stale file is never read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from peerlearn.data.batches import Normalizer
from peerlearn.data.bundle import Split
from peerlearn.engine.checkpoint import atomic_write

CACHE_VERSION = "features-v1"


def default_cache_dir() -> Path:
    base = os.environ.get("PEERLEARN_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "peerlearn") / "features"


def _update_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())


def features_key(model: torch.nn.Module, splits: dict[str, Split], normalizer: Normalizer,
                 extra: str = "") -> str:
    """Hex digest of backbone state + input sizes + split inputs + normalisation."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for name, tensor in model.backbones.state_dict().items():
        _update_tensor(digest, f"w:{name}", tensor)
    digest.update(repr((model.input_sizes, model.input_pads)).encode())
    _update_tensor(digest, "background", model.background)
    for split_name, split in splits.items():
        _update_tensor(digest, f"x:{split_name}", split.x)
    _update_tensor(digest, "mean", normalizer.mean)
    _update_tensor(digest, "std", normalizer.std)
    digest.update(extra.encode())
    return digest.hexdigest()


@torch.inference_mode()
def compute_features(model: torch.nn.Module, split: Split, normalizer: Normalizer, device: torch.device,
                     batch_size: int = 512) -> torch.Tensor:
    """Backbone features of every item of ``split`` in order (eval mode, no augmentation)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        x = normalizer(split.x[start:start + batch_size].to(device))
        out.append(model.backbone_features(x).float().cpu())
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.feature_dim)
    return torch.cat(out)


def cached_features(model: torch.nn.Module, splits: dict[str, Split], normalizer: Normalizer,
                    device: torch.device, cache_dir: Optional[Path] = None,
                    batch_size: int = 512) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Features of each split, read from the cache when present. Returns (features, file, hit)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / f"{features_key(model, splits, normalizer)}.safetensors"
    if path.is_file():
        try:
            stored = load_file(str(path))
            if set(stored) == set(splits) and all(len(stored[k]) == len(splits[k]) for k in splits):
                return stored, path, True
        except Exception:  # a damaged cache file is recomputed
            pass
    features = {name: compute_features(model, split, normalizer, device, batch_size).contiguous()
                for name, split in splits.items()}
    atomic_write(path, lambda tmp: save_file(features, str(tmp)))
    return features, path, False
