"""Checkpoints: one safetensors file holding weights, optimizer and RNG tensors, with the rest as JSON.

Nothing is unpickled when loading, so a checkpoint from elsewhere cannot run code. Files are written
to a temporary name in the same folder, flushed to disk (``fsync``), then renamed over the old one
(``os.replace``, atomic on POSIX) and the folder entry is flushed too: a crash or a full disk while
writing leaves the last good checkpoint in place, never a half-written one. The temporary file is
created with ``O_EXCL`` and the rename replaces a planted symbolic link instead of following it.

Every checkpoint carries its format version and a SHA-256 over its tensors (name, dtype, shape and
raw bytes of each, in name order); ``load_state`` refuses a file whose version it does not know or whose
tensors no longer match the digest (flipped bits, edited weights).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from peerlearn.errors import PeerlearnError

FORMAT_VERSION = 2
FORMAT_KEY = "peerlearn_format"
DIGEST_KEY = "peerlearn_sha256"
POSITION_KEYS = ("stage", "epoch", "step_in_epoch", "global_step", "global_epoch")
_TENSOR_MARK = "__tensor__"
_TUPLE_MARK = "__tuple__"


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tensors, numbers, strings) into a JSON skeleton and tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {_TENSOR_MARK: path}
        if isinstance(node, dict):
            return {"__dict__": [[walk(k, f"{path}/k{i}"), walk(v, f"{path}/{i}")] for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, tuple):
            return {_TUPLE_MARK: [walk(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store a {type(node).__name__} in a checkpoint (at {path})")

    return walk(state, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if _TENSOR_MARK in skeleton:
            return tensors[skeleton[_TENSOR_MARK]]
        if _TUPLE_MARK in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE_MARK])
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a killed ``atomic_write`` left in ``folder`` (call with the run locked)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_safetensors(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
    """``save_file`` of the tensors made contiguous (channels-last weights are not), with safetensors' own error
    type (``SafetensorError``, e.g. for a full disk) turned into the ``OSError`` it stands for, so callers handle
    every write failure one way."""
    try:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, filename, metadata=metadata)
    except SafetensorError as error:
        found = re.search(r"os error (\d+)", str(error))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), filename) from None


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a nested state atomically as one safetensors file, with its format version and digest."""
    skeleton, tensors = flatten_state(state)
    metadata = {"peerlearn": json.dumps(skeleton), FORMAT_KEY: str(FORMAT_VERSION),
                DIGEST_KEY: tensors_digest(tensors)}
    atomic_write(path, lambda tmp: write_safetensors(tensors, str(tmp), metadata))


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by ``save_state`` (no pickle involved), checking version, digest and layout.

    The file is read with one ``open``, so a reader racing a writer's ``os.replace`` sees either the
    old checkpoint or the new one, whole (mapping it by name twice could mix the two).
    """
    path = Path(path)
    if not path.is_file():
        raise PeerlearnError(f"No checkpoint at {str(path)!r}.")
    try:
        data = path.read_bytes()
        header_size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_size > len(data) - 8:
            raise ValueError(f"the header claims {header_size} bytes but the file has {len(data)}")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        tensors = load_bytes(data)
    except Exception as error:  # a damaged file can fail in several ways
        raise PeerlearnError(f"The checkpoint {str(path)!r} cannot be read ({error}); it is damaged or not a "
                             "peerlearn checkpoint.") from None
    if "peerlearn" not in metadata:
        raise PeerlearnError(f"The file {str(path)!r} is a safetensors file but not a peerlearn checkpoint.")
    version = metadata.get(FORMAT_KEY)
    if version != str(FORMAT_VERSION):
        raise PeerlearnError(f"The checkpoint {str(path)!r} has format version {version or '1 (no version)'}, but "
                             f"this peerlearn reads version {FORMAT_VERSION} only; resume it with the peerlearn "
                             "that wrote it, or start a new run.")
    if metadata.get(DIGEST_KEY) != tensors_digest(tensors):
        raise PeerlearnError(f"The checkpoint {str(path)!r} fails its content check: its tensors do not match the "
                             "SHA-256 stored when it was written (changed or damaged bytes). Refusing to train on "
                             "it; restore a good copy or start a new run.")
    try:
        return unflatten_state(json.loads(metadata["peerlearn"]), tensors)
    except (ValueError, KeyError, TypeError) as error:
        raise PeerlearnError(f"The checkpoint {str(path)!r} has broken metadata ({type(error).__name__}: "
                             f"{error}); it cannot be resumed.") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``load_state`` of a trainer checkpoint, whose layout (position, members, RNG) is checked too."""
    state = load_state(path)
    try:
        check_state_layout(state)
    except ValueError as error:
        raise PeerlearnError(f"The checkpoint {str(path)!r} has broken metadata ({error}); it cannot be "
                             "resumed.") from None
    return state


def check_state_layout(state: Any) -> None:
    """Raise ValueError unless ``state`` has a trainer checkpoint's shape (position, members, rng)."""
    if not isinstance(state, dict) or not isinstance(state.get("position"), dict):
        raise ValueError("no training position")
    position = state["position"]
    for key in POSITION_KEYS:
        value = position.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"position.{key} is {value!r}, not a count")
    members = state.get("members")
    if not isinstance(members, dict) or not all(isinstance(e, dict) and isinstance(e.get("model"), dict)
                                                for e in members.values()):
        raise ValueError("members' weights missing")
    if not isinstance(state.get("rng"), dict) or not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise ValueError("random generator states missing")


def rng_state() -> dict[str, Any]:
    """Every global random generator a step may draw from: torch (dropout, init), CUDA, numpy, Python.

    Data order and augmentation do not need saving: they come from generators seeded by
    (seed, epoch, step) in ``BatchStream``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        entry = state["numpy"]
        np.random.set_state((entry["kind"], entry["keys"].numpy().astype(np.uint32), entry["pos"],
                             entry["has_gauss"], entry["cached_gaussian"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(path: Path, models: dict[str, torch.nn.Module], metadata: dict[str, str] | None = None) -> None:
    """Weights of several models in one safetensors file, keys ``<member>.<parameter>``."""
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous().clone()
               for name, model in models.items() for key, value in model.state_dict().items()}
    metadata = {**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)}
    atomic_write(path, lambda tmp: write_safetensors(tensors, str(tmp), metadata))


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file, without running code from it.

    ``.safetensors`` files are parsed by safetensors (no pickle at all). PyTorch ``.pt``/``.pth`` files
    are read with ``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers
    only: a file that asks for any other object (e.g. one whose ``__reduce__`` calls a function) is
    refused before that object is built. Anything else raises ``PeerlearnError`` naming the file.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for forbidden globals, others for damaged files
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PeerlearnError(f"Refusing to load {str(path)!r}: it is not a plain weights file that can be read "
                                 f"without running code ({first}). Convert it to .safetensors.") from None
        if isinstance(loaded, dict):
            for key in ("state_dict", "model"):
                if isinstance(loaded.get(key), dict):
                    loaded = loaded[key]
                    break
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise PeerlearnError(f"{str(path)!r} does not hold a mapping of names to tensors (a state_dict).")
        return {str(k): v for k, v in loaded.items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            stored = (handle.metadata() or {}).get(DIGEST_KEY)
    except Exception as error:  # safetensors raises several types for a damaged or foreign file
        raise PeerlearnError(f"Cannot read the weights file {str(path)!r} as safetensors ({error}); it is damaged "
                             "or not a safetensors file.") from None
    if stored is not None and stored != tensors_digest(tensors):  # files peerlearn wrote carry a digest
        raise PeerlearnError(f"The weights file {str(path)!r} fails its content check: its tensors do not match the "
                             "SHA-256 stored when it was written (changed or damaged bytes).")
    return tensors


def load_weights(path: Path, member: str | None = None) -> dict[str, torch.Tensor]:
    """Read weights saved by ``save_weights`` (all, or one member's with its prefix removed).

    Never unpickles arbitrary objects (see ``read_tensor_file``)."""
    tensors = read_tensor_file(path)
    if member is None:
        return tensors
    prefix = f"{member}."
    found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not found:
        members = sorted({k.split(".", 1)[0] for k in tensors})
        raise PeerlearnError(f"{str(path)!r} holds no weights of member {member!r}; it has: {', '.join(members)}.")
    return found
