"""MNIST and Fashion-MNIST from their official IDX files (gzipped or plain).

IDX format: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions, then
one big-endian uint32 per dimension, then the values in C order. Images are idx3 (magic 2051),
labels idx1 (magic 2049).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from peerlearn.data.files import official_file
from peerlearn.data.raw import RawDataset
from peerlearn.errors import DataError

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _open_maybe_gzip(path: Path):
    """Open ``path`` for binary reading, decompressing when it starts with the gzip magic bytes."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


READ_CHUNK = 1 << 22


def _read_exactly(handle, size: int, path: Path, what: str) -> bytearray:
    """Read exactly ``size`` bytes into a writable buffer, or raise ``DataError`` (truncated file).

    The buffer grows with what is really read (4 MiB at a time), so a header that claims more data
    than the file holds costs no more memory than the file itself."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = handle.read(min(READ_CHUNK, size - len(buffer)))
        if not chunk:
            raise DataError(
                f"The IDX file {path} is truncated: its {what} needs {size} bytes but only {len(buffer)} are there. "
                "Delete it and download it again."
            )
        buffer += chunk
    return buffer


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array of its declared type and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The IDX file {path} does not exist.")
    try:
        with _open_maybe_gzip(path) as handle:
            header = _read_exactly(handle, 4, path, "header")
            if header[0] != 0 or header[1] != 0 or header[2] not in IDX_TYPES or header[3] == 0:
                raise DataError(
                    f"The file {path} is not an IDX file: its magic number is {bytes(header).hex()}, expected "
                    "0000 then a type byte (08 for unsigned bytes) and the number of dimensions."
                )
            dtype, ndim = IDX_TYPES[header[2]], header[3]
            shape = tuple(int(d) for d in np.frombuffer(_read_exactly(handle, 4 * ndim, path, "shape"), ">u4"))
            count = math.prod(shape)  # Python integers: a forged header cannot overflow the count
            data = _read_exactly(handle, count * dtype.itemsize, path, f"data of shape {shape}")
            if handle.read(1):
                raise DataError(f"The IDX file {path} has bytes after its data of shape {shape}; it is corrupted.")
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"The file {path} is truncated or corrupted and cannot be read ({error}).") from error
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array if dtype.isnative or dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def _read_images(path: Path) -> torch.Tensor:
    """An idx3 image file as uint8 [N, 1, H, W]."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"The file {path} should hold uint8 images [N, H, W] (idx3-ubyte), but holds {images.dtype} {images.shape}."
        )
    return torch.from_numpy(images).unsqueeze(1)


def _read_labels(path: Path, num_classes: int) -> torch.Tensor:
    """An idx1 label file as int64 [N], checked to lie in 0..num_classes-1."""
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"The file {path} should hold uint8 labels [N] (idx1-ubyte), but holds {labels.dtype} {labels.shape}.")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"The file {path} has label {labels.max()}, but there are only {num_classes} classes.")
    return torch.from_numpy(labels.astype(np.int64))


def _load_part(config, source: str, folder: str, prefix: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one part (``train`` or ``t10k``), checked to have the same length."""
    images_path = official_file(config, source, f"{folder}/{prefix}-images-idx3-ubyte.gz")
    labels_path = official_file(config, source, f"{folder}/{prefix}-labels-idx1-ubyte.gz")
    images, labels = _read_images(images_path), _read_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels.")
    return images, labels


def _load_idx_source(config, source: str, folder: str, class_names: list[str]) -> RawDataset:
    """A dataset in the MNIST layout: ``<root>/<folder>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``."""
    train_x, train_y = _load_part(config, source, folder, "train", len(class_names))
    test_x, test_y = _load_part(config, source, folder, "t10k", len(class_names))
    return RawDataset(train_x, train_y, test_x, test_y, class_names=list(class_names))


def load_mnist(config) -> RawDataset:
    """MNIST: 60,000 training and 10,000 test handwritten digits, uint8 [N, 1, 28, 28]."""
    return _load_idx_source(config, "mnist", "mnist", MNIST_CLASSES)


def load_fashion_mnist(config) -> RawDataset:
    """Fashion-MNIST: 60,000 training and 10,000 test clothing images, uint8 [N, 1, 28, 28]."""
    return _load_idx_source(config, "fashion_mnist", "fashion-mnist", FASHION_MNIST_CLASSES)
