"""A user's own images: one subfolder per class, optionally inside ``train/`` and ``test/``.

Layouts accepted for ``data.path``::

    path/train/<class>/*.png + path/test/<class>/*.png    (the given split is kept)
    path/<class>/*.png                                     (a seeded, stratified 20% becomes test)

Images are decoded with Pillow, converted to ``data.options.mode`` (RGB or L), resized to
``data.image_size`` (else ``data.options.size``, default 32) and held in memory as uint8 tensors.
Options: ``mode``, ``size``, ``test_fraction`` (0.2), ``split_seed`` (1234), ``workers`` (decoding threads).

With ``data.stream`` (true, or auto for folders whose decoded size exceeds ``data.stream_threshold_mb``)
the images stay on disk as ``LazyItems``: decoded once into an on-disk uint8 array (``decoded_cache``;
options ``cache`` (true) and ``cache_dir``) that DataLoader workers read batch by batch, or with
``cache: false`` decoded again from the files in every epoch (``ImageFiles``). The splits are the same in
every case.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from torch.utils.data import Dataset

from peerlearn.data.decoded_cache import cached_images
from peerlearn.data.lazy import LazyItems
from peerlearn.data.memory import check_images_fit
from peerlearn.data.raw import RawDataset
from peerlearn.data.streaming import stream_workers, wants_stream
from peerlearn.data.splits import stratified_permutation
from peerlearn.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
MODES = {"RGB": 3, "L": 1}
DEFAULT_SIZE = 32
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 1234


def _pillow():
    """Import Pillow's ``Image`` module, or say how to install it."""
    try:
        from PIL import Image
    except ImportError as error:
        raise DataError("The image_folder source reads images with Pillow, which is not installed: pip install pillow") from error
    return Image


def class_folders(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` (hidden ones skipped), sorted by name: one per class."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder`` with a known extension, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_images(folder: Path, class_names: list[str], every_class: bool = False) -> tuple[list[Path], list[int]]:
    """All images under ``folder/<class>/`` with their class indices (classes missing here are allowed,
    unless ``every_class``: then an absent or empty class folder is a ``DataError`` naming it)."""
    files, labels, empty = [], [], []
    for index, name in enumerate(class_names):
        found = image_files(folder / name) if (folder / name).is_dir() else []
        if not found:
            empty.append(folder / name)
        else:
            files += found
            labels += [index] * len(found)
    if every_class and files and empty:  # no image at all is reported by the caller
        raise DataError(f"The class folder {empty[0]} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        "remove it or add its images.")
    return files, labels


def read_image(path: Path, mode: str, size: int | tuple[int, int], data: Optional[bytes] = None) -> np.ndarray:
    """One image as uint8 [C, H, W] (``size`` is H = W, or (H, W)), decoded from ``data`` (the file's bytes,
    already read) or from the file; an unreadable image raises ``DataError`` naming ``path``."""
    Image = _pillow()
    height, width = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(f"Cannot read the image {path}: {error}. Delete or replace the file.") from error
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_images(files: list[Path], mode: str, size: int | tuple[int, int], workers: int) -> torch.Tensor:
    """Decode many images (threads: Pillow releases the GIL while decoding) into uint8 [N, C, H, W]."""
    height, width = (size, size) if isinstance(size, int) else size
    check_images_fit(len(files), MODES[mode], height, width)
    out = np.empty((len(files), MODES[mode], height, width), dtype=np.uint8)
    if workers <= 1 or len(files) < 64:
        for i, path in enumerate(files):
            out[i] = read_image(path, mode, size)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, pixels in enumerate(pool.map(lambda p: read_image(p, mode, size), files)):
                out[i] = pixels
    return torch.from_numpy(out)


class ImageFiles(Dataset):
    """Image files decoded on demand: item i is (uint8 [C, H, W] tensor, label)."""

    draws_random = False  # decoding draws no random numbers: the streaming workers need not seed

    def __init__(self, files: list[Path], labels: list[int], mode: str, size: int | tuple[int, int]):
        self.files, self.labels, self.mode, self.size = files, labels, mode, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(read_image(self.files[index], self.mode, self.size).copy()), self.labels[index]


def image_items(files: list[Path], labels: list[int], mode: str, size: int, workers: int, stream: bool,
                cache: str | bool | None = None, threads: int = 1):
    """The images of ``files``: decoded now into a uint8 tensor (``threads`` threads), or (``stream``) left on
    disk as ``LazyItems`` read by ``workers`` processes: out of the decoded-image cache (``cache``: its folder,
    None for the default one, False for none; built now with ``threads`` threads when missing or stale), or
    decoded from the files in every epoch."""
    if not stream:
        return read_images(files, mode, size, threads)
    shape = (MODES[mode], size, size)
    if cache is False:
        dataset = ImageFiles(files, labels, mode, size)
    else:
        dataset = cached_images(files, labels, mode, shape, lambda path, data: read_image(path, mode, size, data),
                                threads, cache or None)
    return LazyItems(dataset, item_shape=shape, dtype=torch.uint8, workers=workers)


def _cache_option(config) -> str | bool | None:
    """``data.options.cache`` / ``cache_dir``: False (no cache), a folder, or None (the default folder)."""
    options = getattr(config, "options", None) or {}
    enabled = options.get("cache", True)
    if not isinstance(enabled, bool):
        raise DataError(f"Invalid config: key 'data.options.cache' is {enabled!r}; it must be true or false.")
    return options.get("cache_dir") if enabled else False


def _options(config) -> tuple[str, int, float, int, int]:
    """(mode, size, test_fraction, split_seed, workers) from the config, validated."""
    options = getattr(config, "options", None) or {}
    mode = str(options.get("mode", "RGB"))
    if mode not in MODES:
        raise DataError(f"Invalid config: key 'data.options.mode' is {mode!r}; allowed: 'RGB', 'L'.")
    size = int(getattr(config, "image_size", None) or options.get("size", DEFAULT_SIZE))
    if size <= 0:
        raise DataError(f"Invalid config: the image size must be positive, got {size}.")
    fraction = float(options.get("test_fraction", DEFAULT_TEST_FRACTION))
    if not 0.0 < fraction < 1.0:
        raise DataError(f"Invalid config: key 'data.options.test_fraction' is {fraction}; it must lie in (0, 1).")
    workers = int(options.get("workers", min(8, os.cpu_count() or 1)))
    return mode, size, fraction, int(options.get("split_seed", DEFAULT_SPLIT_SEED)), workers


def _require_images(files: list, folder: Path) -> None:
    """Raise ``DataError`` when a folder holds no image at all."""
    if not files:
        raise DataError(
            f"No images found under {folder}: expected one subfolder per class holding "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} files."
        )


def _split_layout(root: Path, mode: str, size: int, workers: int, config=None) -> RawDataset:
    """``root/train/<class>`` and ``root/test/<class>``: the classes are those of ``train``."""
    class_names = [p.name for p in class_folders(root / "train")]
    unknown = sorted({p.name for p in class_folders(root / "test")} - set(class_names))
    if unknown:
        raise DataError(f"{root / 'test'} has class folders that {root / 'train'} lacks: {', '.join(unknown)}.")
    listed = {part: list_images(root / part, class_names, every_class=part == "train") for part in ("train", "test")}
    for part, (files, _) in listed.items():
        _require_images(files, root / part)
    stream = wants_stream(config, len(listed["train"][0]) * MODES[mode] * size * size)
    loaders, cache = (stream_workers(config), _cache_option(config)) if stream else (0, None)
    parts = []
    for part in ("train", "test"):
        files, labels = listed[part]
        images = image_items(files, labels, mode, size, loaders, stream, cache, threads=workers)
        parts.append((images, torch.tensor(labels, dtype=torch.int64), files))
    (train_x, train_y, train_files), (test_x, test_y, test_files) = parts
    extras = {"train_files": [str(f) for f in train_files], "test_files": [str(f) for f in test_files]}
    return RawDataset(train_x, train_y, test_x, test_y, class_names=class_names, extras=extras)


def _class_layout(root: Path, mode: str, size: int, fraction: float, seed: int, workers: int,
                  config=None) -> RawDataset:
    """``root/<class>``: a seeded, stratified ``fraction`` of the images is held out as test."""
    class_names = [p.name for p in class_folders(root)]
    files, labels = list_images(root, class_names, every_class=True)
    _require_images(files, root)
    stream = wants_stream(config, len(files) * MODES[mode] * size * size)
    loaders, cache = (stream_workers(config), _cache_option(config)) if stream else (0, None)
    images = image_items(files, labels, mode, size, loaders, stream, cache, threads=workers)
    labels = torch.tensor(labels, dtype=torch.int64)
    order = stratified_permutation(labels, seed)
    n_test = min(len(order) - 1, max(1, int(round(len(order) * fraction))))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    extras = {"train_files": [str(files[i]) for i in train_idx], "test_files": [str(files[i]) for i in test_idx]}
    return RawDataset(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                      class_names=class_names, extras=extras)


def load_image_folder(config) -> RawDataset:
    """Load ``data.path`` as an image classification dataset (layouts in the module docstring)."""
    if not getattr(config, "path", None):
        raise DataError("Invalid config: key 'data.path' is required by the source 'image_folder' (a folder).")
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise DataError(f"The image folder {root} (data.path) does not exist or is not a folder.")
    mode, size, fraction, seed, workers = _options(config)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _split_layout(root, mode, size, workers, config)
    return _class_layout(root, mode, size, fraction, seed, workers, config)
