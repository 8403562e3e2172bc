"""CIFAR-10 and CIFAR-100 from the official "python version" pickle archives.

Either the tarball (``<root>/cifar-10-python.tar.gz``) or the folder it extracts to
(``<root>/cifar-10-batches-py/``) is accepted; the tarball is read in place, never extracted.

The official batches are pickles of dicts holding bytes, lists and numpy arrays. A pickle can run
arbitrary code, so they are read with ``SafeUnpickler``, which can build numpy arrays and nothing else.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from peerlearn.data.files import EXTRACTED_FOLDERS, OFFICIAL_FILES, official_file, resolve_data_root
from peerlearn.data.raw import RawDataset
from peerlearn.errors import DataError

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_SHAPE = (3, 32, 32)


def _array_reconstruct():
    """numpy's array-unpickling function (``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays; any other global is refused with ``DataError``."""

    source_name = "<pickle>"

    def find_class(self, module: str, name: str):
        factory = ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DataError(
                f"Refusing to load {self.source_name}: it asks for {module}.{name}, but an official CIFAR pickle "
                "holds only bytes, lists and numpy arrays. The file is not the official one and may be malicious; "
                "delete it and download the official archive again."
            )
        return factory()


def safe_unpickle(data: bytes, name: str) -> dict:
    """Unpickle one CIFAR batch (keys as bytes, ``encoding='bytes'``) with ``SafeUnpickler``."""
    unpickler = SafeUnpickler(io.BytesIO(data), encoding="bytes")
    unpickler.source_name = name
    try:
        obj = unpickler.load()
    except DataError:
        raise
    except Exception as error:  # a truncated or garbled pickle raises many kinds of errors
        raise DataError(f"{name} is truncated or corrupted and cannot be unpickled ({error}).") from error
    if not isinstance(obj, dict):
        raise DataError(f"{name} should hold a dict, but holds a {type(obj).__name__}.")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in obj.items()}


# --------------------------------------------------------------------------- reading the archive
def _read_members(config, source: str, members: list[str]) -> dict[str, dict]:
    """Unpickle the named batch files of ``source`` from its extracted folder or its tarball."""
    folder_name = EXTRACTED_FOLDERS[source]
    folder = resolve_data_root(config) / folder_name
    if folder.is_dir():
        return {name: _read_extracted(folder / name) for name in members}
    archive = official_file(config, source, OFFICIAL_FILES[source][0].relative_path)
    return _read_tarball(archive, folder_name, members)


def _read_extracted(path: Path) -> dict:
    """One batch file from an extracted folder."""
    if not path.is_file():
        raise DataError(
            f"The CIFAR batch file {path} is missing: the extracted folder {path.parent} is incomplete. "
            "Delete the folder (the .tar.gz is then used) or extract the official archive again."
        )
    return safe_unpickle(path.read_bytes(), str(path))


def _read_tarball(archive: Path, folder_name: str, members: list[str]) -> dict[str, dict]:
    """The named batch files from ``archive``, read in one sequential pass without extracting."""
    wanted = {f"{folder_name}/{name}": name for name in members}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                found[name] = safe_unpickle(tar.extractfile(member).read(), f"{archive}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"The archive {archive} is truncated or corrupted ({error}); download it again.") from error
    missing = [f"{folder_name}/{name}" for name in members if name not in found]
    if missing:
        raise DataError(f"The archive {archive} lacks {', '.join(missing)}; it is not the official CIFAR archive.")
    return found


# --------------------------------------------------------------------------- building tensors
def _images(batch: dict, name: str) -> np.ndarray:
    """The batch's ``data`` (uint8 [N, 3072], rows R then G then B planes) as [N, 3, 32, 32]."""
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise DataError(f"{name}: 'data' should be uint8 [N, 3072], but is {data.dtype} {data.shape}.")
    return data.reshape(-1, *IMAGE_SHAPE)


def _labels(batch: dict, key: str, name: str, count: int, num_classes: int) -> np.ndarray:
    """The batch's labels under ``key`` as int64, checked against the image count and class count."""
    if key not in batch:
        raise DataError(f"{name} has no {key!r} entry; it is not an official CIFAR batch.")
    labels = np.asarray(batch[key], dtype=np.int64)
    if labels.shape != (count,):
        raise DataError(f"{name}: {count} images but {labels.size} labels under {key!r}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels under {key!r} must lie in 0..{num_classes - 1}.")
    return labels


def _class_names(meta: dict, key: str, name: str) -> list[str]:
    """Decoded class names from the archive's meta file."""
    if key not in meta:
        raise DataError(f"{name} has no {key!r} entry; it is not an official CIFAR meta file.")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _part(batches: list[tuple[str, dict]], key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated images and labels of several batches as tensors."""
    images = [_images(batch, name) for name, batch in batches]
    labels = [_labels(batch, key, name, len(x), num_classes) for (name, batch), x in zip(batches, images)]
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar10(config) -> RawDataset:
    """CIFAR-10: 50,000 training and 10,000 test images, uint8 [N, 3, 32, 32], 10 classes."""
    members = [*CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta"]
    files = _read_members(config, "cifar10", members)
    class_names = _class_names(files["batches.meta"], "label_names", "cifar-10 batches.meta")
    train = [(name, files[name]) for name in CIFAR10_TRAIN_BATCHES]
    train_x, train_y = _part(train, "labels", len(class_names))
    test_x, test_y = _part([("test_batch", files["test_batch"])], "labels", len(class_names))
    return RawDataset(train_x, train_y, test_x, test_y, class_names=class_names)


def load_cifar100(config) -> RawDataset:
    """CIFAR-100: 50,000 training and 10,000 test images, uint8 [N, 3, 32, 32].

    Labels are the 100 fine classes; ``data.options.labels: coarse`` selects the 20 superclasses.
    """
    granularity = (getattr(config, "options", None) or {}).get("labels", "fine")
    if granularity not in ("fine", "coarse"):
        raise DataError(f"Invalid config: key 'data.options.labels' is {granularity!r}; allowed: 'fine', 'coarse'.")
    files = _read_members(config, "cifar100", ["train", "test", "meta"])
    class_names = _class_names(files["meta"], f"{granularity}_label_names", "cifar-100 meta")
    key = f"{granularity}_labels"
    train_x, train_y = _part([("cifar-100 train", files["train"])], key, len(class_names))
    test_x, test_y = _part([("cifar-100 test", files["test"])], key, len(class_names))
    return RawDataset(train_x, train_y, test_x, test_y, class_names=class_names)
