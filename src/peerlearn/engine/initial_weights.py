"""Initial weights of a member (a teacher, a starting point) from a file or from another run.

``members.N.weights`` (and a transfer backbone's ``source``) may be

* a peerlearn run directory: its ``model.safetensors``, whose keys are ``<member>.<parameter>``; the member
  of the same name is taken, else the run's only member;
* ``RUN_DIR:member``: that member of another run, whatever this member is called;
* a ``.safetensors`` file, or a ``.pt`` / ``.pth`` file read with ``torch.load(weights_only=True)`` (never
  unpickling code; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened): a peerlearn weights
  file as above, or the plain ``state_dict()`` of the network itself. A network of your own is trained
  wrapped (``HookedModel``, its weights under ``network.``), so a plain state dict of your module is matched
  against the module inside the wrapper: no key prefix is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.run_files import WEIGHTS_NAME

TORCH_SUFFIXES = (".pt", ".pth")
WRAPPED_PREFIX = "network."  # HookedModel keeps the user's network under this name


def split_source(source: str) -> tuple[Path, Optional[str]]:
    """``RUN_DIR:member`` -> (RUN_DIR, member); anything else -> (path, None)."""
    path = Path(source)
    if not path.exists() and ":" in source:
        head, _, member = source.rpartition(":")
        if member and Path(head).is_dir():
            return Path(head), member
    return path, None


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a .pt/.pth state dict (weights only); errors name ``key``."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        try:
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle of code, a truncated file, ...
            detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise ConfigError(f"Invalid config: key {key!r}: Refusing {str(path)!r}: it cannot be read as a "
                              f"weights-only state dict ({type(error).__name__}: {detail}); peerlearn reads .pt files "
                              "with weights_only=True and never runs code a pickle names.") from None
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"Invalid config: key {key!r}: {str(path)!r} does not hold a state dict (a mapping of "
                              "parameter names to tensors).")
        return {str(k): v for k, v in state.items()}
    from peerlearn.engine.checkpoint import load_weights

    try:
        return load_weights(path)
    except ConfigError:
        raise
    except PeerlearnError as error:
        raise ConfigError(f"Invalid config: key {key!r}: {error}") from None


def saved_members(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> list[str]:
    """Members of a peerlearn weights file (keys ``<member>.<parameter>``) whose tensors fit ``model_keys``
    (directly or inside the wrapper of a network of your own); empty for a plain state dict."""
    if set(tensors) & model_keys or set(_wrapped(tensors)) & model_keys:
        return []
    prefixes = dict.fromkeys(k.split(".", 1)[0] for k in tensors if "." in k)
    found = []
    for prefix in prefixes:
        own = member_tensors(tensors, prefix)
        if set(own) & model_keys or set(_wrapped(own)) & model_keys:
            found.append(prefix)
    return found


def member_tensors(tensors: dict[str, torch.Tensor], member: str) -> dict[str, torch.Tensor]:
    """The tensors of ``member`` in a peerlearn weights file, its prefix removed."""
    prefix = f"{member}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _wrapped(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {WRAPPED_PREFIX + k: v for k, v in tensors.items()}


def fit_to_model(tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``tensors`` keyed as ``model`` keys them: a plain state dict of a wrapped network of your own gets the
    wrapper's ``network.`` prefix."""
    model_keys = set(model.state_dict())
    if set(tensors) & model_keys:
        return tensors
    wrapped = _wrapped(tensors)
    return wrapped if set(wrapped) & model_keys else tensors


def member_weights(source: str, name: str, model: nn.Module, key: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors ``source`` (see the module docstring) gives member ``name``, keyed as ``model`` keys them,
    and the file they came from."""
    path, chosen = split_source(source)
    if path.is_dir():
        path = path / WEIGHTS_NAME
        if path.is_file():  # a run's weights are the ones it wrote and recorded (peerlearn.trust)
            from peerlearn.trust import read_records

            try:
                read_records(path.parent).check(path.name)
            except ConfigError as error:
                raise ConfigError(f"Invalid config: key {key!r}: {error}") from None
    if not path.is_file():
        raise ConfigError(f"Invalid config: key {key!r} has the value {source!r}, which is neither a .safetensors "
                          "(or .pt) file nor a peerlearn run directory holding model.safetensors (RUN_DIR or "
                          "RUN_DIR:member).")
    tensors = read_state_dict(path, key)
    model_keys = set(model.state_dict())
    saved = saved_members(tensors, model_keys)
    if chosen is not None:
        own = member_tensors(tensors, chosen)
        if not own:
            members = sorted({k.split(".", 1)[0] for k in tensors})
            raise ConfigError(f"Invalid config: key {key!r}: {str(path)!r} holds no member {chosen!r}; it has: "
                              f"{', '.join(members)}.")
        return fit_to_model(own, model), path
    own = member_tensors(tensors, name)
    if own:
        return fit_to_model(own, model), path
    if len(saved) == 1:
        return fit_to_model(member_tensors(tensors, saved[0]), model), path
    if saved:
        raise ConfigError(f"Invalid config: key {key!r}: {str(path)!r} holds the weights of members "
                          f"{', '.join(saved)}, none named {name!r}; pick one with RUN_DIR:member (e.g. "
                          f"{source}:{saved[0]}).")
    return fit_to_model(tensors, model), path
