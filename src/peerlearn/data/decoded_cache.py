"""Decoded images of a streamed image folder, kept on disk as one raw uint8 array [N, C, H, W].

Streaming an image folder would decode every PNG/JPEG again in every epoch. Instead, the first time a
folder is streamed, its images are decoded once (Pillow in threads, as for the in-memory path) into a raw
file of N·C·H·W bytes; later epochs, and later runs, read batches out of that file through ``np.memmap``.
The pages stay in the OS page cache, shared by the DataLoader workers, so the process holds no copy.

The file is named by a SHA-256 key of what decides its bytes: each image's path, size in bytes and
modification time (ns), and the decoded (mode, H, W). A changed, added or removed file gives another key,
so a stale array is never read; on reuse the file's length is checked against N·C·H·W. It is written to a
temporary name in the same folder and renamed into place when complete, so an interrupted build leaves no
half-written array behind (concurrent runs may both build it; the last rename wins with equal bytes).

Where: ``data.options.cache_dir``, else ``$PEERLEARN_CACHE/decoded``, else ``~/.cache/peerlearn/decoded``;
``data.options.cache: false`` turns it off (every epoch decodes the files again).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from peerlearn.errors import DataError

CACHE_VERSION = "decoded-v1"


def default_cache_dir() -> Path:
    """``$PEERLEARN_CACHE/decoded``, else ``~/.cache/peerlearn/decoded``."""
    base = os.environ.get("PEERLEARN_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "peerlearn") / "decoded"


def cache_key(files: list[Path], mode: str, shape: tuple[int, int, int]) -> str:
    """Hex SHA-256 of (version, mode, item shape, and every file's path, byte size and mtime in ns)."""
    digest = hashlib.sha256(f"{CACHE_VERSION}|{mode}|{shape}|{len(files)}\n".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build_array(path: Path, count: int, shape: tuple[int, int, int], decode: Callable[[int], np.ndarray],
                threads: int) -> None:
    """Write ``decode(i)`` for i < ``count`` into a raw uint8 file at ``path``, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        out = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(count, *shape)) if count else None
        if threads <= 1 or count < 64:
            for i in range(count):
                out[i] = decode(i)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for i, pixels in enumerate(pool.map(decode, range(count))):
                    out[i] = pixels
        if out is not None:
            out.flush()
            del out
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class DecodedArray(Dataset):
    """Item i: (uint8 [C, H, W] tensor, label) read from the cached array; ``read_batch`` reads many at once.

    The memmap is opened lazily in each process (a worker opens its own; pickling sends only the path).
    """

    draws_random = False  # the streaming workers need not seed anything before reading

    def __init__(self, path: Path, labels: list[int], shape: tuple[int, int, int]):
        self.path, self.labels, self.shape = Path(path), labels, tuple(shape)
        self._array: Optional[np.memmap] = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = (np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self.labels), *self.shape))
                           if self.labels else np.empty((0, *self.shape), dtype=np.uint8))
        return self._array

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.array[index])), self.labels[index]

    def read_batch(self, positions: torch.Tensor) -> torch.Tensor:
        """The inputs at ``positions`` (any order), stacked: one fancy-indexed copy out of the memmap."""
        return torch.from_numpy(np.asarray(self.array[positions.numpy()]))


def cached_images(files: list[Path], labels: list[int], mode: str, shape: tuple[int, int, int],
                  decode: Callable[[Path], np.ndarray], threads: int, cache_dir: Optional[str]) -> DecodedArray:
    """The decoded images of ``files`` as a ``DecodedArray``: reused when its key matches, else built now."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(files, mode, shape)
    path = folder / f"{key}.u8"
    expected = len(files) * int(np.prod(shape))
    if not (path.is_file() and path.stat().st_size == expected):
        try:
            build_array(path, len(files), shape, lambda i: decode(files[i]), threads)
            (folder / f"{key}.json").write_text(json.dumps(
                {"version": CACHE_VERSION, "items": len(files), "shape": list(shape), "mode": mode,
                 "first_file": str(files[0]) if files else None}, indent=1))
        except OSError as error:
            raise DataError(f"Cannot write the decoded-image cache in {folder}: {error}. Give a writable folder "
                            "as data.options.cache_dir, or turn the cache off with data.options.cache: false.") from error
    return DecodedArray(path, labels, shape)
