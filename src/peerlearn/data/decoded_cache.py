"""Decoded images of a streamed image folder, kept on disk as one raw uint8 array [N, C, H, W].

Streaming an image folder would decode every PNG/JPEG again in every epoch. Instead, the first time a
folder is streamed, its images are decoded once (Pillow in threads, as for the in-memory path) into a raw
file of N·C·H·W bytes; later epochs, and later runs, read batches out of that file through ``np.memmap``.
The pages stay in the OS page cache, shared by the DataLoader workers, so the process holds no copy.

The file is named by a SHA-256 key of each image's path, size in bytes and modification time (ns), and the
decoded (mode, H, W): a changed, added or removed file usually gives another key. Beside the array, a
manifest (``KEY.json``) records two SHA-256 digests, so a stale or damaged array is never trained on:

* ``content``: of the images' own bytes (one digest per file, in order), computed while the files are read
  for decoding. Each later use reads the files again and compares: images rewritten with the same names,
  sizes and modification times are found this way, which no file-system date can promise.
* ``array``: of the array's bytes. Each later use hashes the array and compares: a cache file damaged on
  disk, or overwritten with other bytes of the same length, is found.

A mismatch (or a missing or unreadable manifest, or an array of the wrong length) rebuilds the array from
the images with a warning that says why. Reading N small files and hashing them costs far less than
decoding them (``docs/reliability.md`` has the numbers). The array and its manifest are written to
temporary names in the same folder and renamed into place when complete, so an interrupted build leaves no
half-written array behind (concurrent runs may both build it; the last rename wins with equal bytes).

Where: ``data.options.cache_dir``, else ``$PEERLEARN_CACHE/decoded``, else ``~/.cache/peerlearn/decoded``;
``data.options.cache: false`` turns it off (every epoch decodes the files again).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from peerlearn.errors import DataError

CACHE_VERSION = "decoded-v2"
HASH_CHUNK = 16 << 20  # bytes of the array hashed per read


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


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"Cannot read the image {path}: {error.strerror or error}.") from None


def combine(file_digests) -> str:
    """The content digest: SHA-256 over the count and every file's own SHA-256, in order."""
    digests = list(file_digests)
    total = hashlib.sha256(f"{len(digests)}\n".encode())
    for one in digests:
        total.update(one)
    return total.hexdigest()


def content_digest(files: list[Path], threads: int = 1) -> str:
    """SHA-256 of the files' bytes (each file hashed on its own, then combined in order); read in
    ``threads`` threads (hashlib releases the GIL on large buffers)."""
    def one(path: Path) -> bytes:
        return hashlib.sha256(_read(path)).digest()

    if threads <= 1 or len(files) < 64:
        return combine(one(path) for path in files)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return combine(pool.map(one, files))


def array_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(HASH_CHUNK)
            if not piece:
                return digest.hexdigest()
            digest.update(piece)


def build_array(path: Path, files: list[Path], shape: tuple[int, int, int],
                decode: Callable[[Path, bytes], np.ndarray], threads: int) -> dict[str, str]:
    """Decode every file into a raw uint8 file at ``path``, atomically (temp file + rename); return the
    digests of the manifest: ``content`` (the files' bytes, hashed as they are read for decoding) and
    ``array`` (the array's bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(handle)
    count = len(files)

    def read_and_decode(i: int) -> tuple[bytes, np.ndarray]:
        data = _read(files[i])
        return hashlib.sha256(data).digest(), decode(files[i], data)

    try:
        out = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(count, *shape)) if count else None
        file_digests, pixels_digest = [], hashlib.sha256()
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            done = pool.map(read_and_decode, range(count)) if threads > 1 and count >= 64 else \
                map(read_and_decode, range(count))
            for i, (file_digest, pixels) in enumerate(done):
                out[i] = pixels
                file_digests.append(file_digest)
                pixels_digest.update(out[i])  # a row of the memmap: C-contiguous, as the file holds it
        if out is not None:
            out.flush()
            del out
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return {"content": combine(file_digests), "array": pixels_digest.hexdigest()}


def write_manifest(path: Path, manifest: dict) -> None:
    """The manifest JSON, atomically (temporary file + rename)."""
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(manifest, indent=1))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def stale_reason(path: Path, manifest_path: Path, files: list[Path], expected_bytes: int, threads: int
                 ) -> Optional[str]:
    """Why the array at ``path`` may not be used (None: it may): missing, wrong length, no readable
    manifest, images whose bytes changed, or array bytes that no longer match their digest."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != expected_bytes:
        return f"it holds {path.stat().st_size} bytes instead of {expected_bytes}"
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = (manifest["content"], manifest["array"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its manifest {manifest_path.name} is missing or unreadable"
    if content_digest(files, threads) != recorded[0]:
        return ("the images' bytes changed since it was built (files rewritten with the same names, sizes and "
                "modification times)")
    if array_digest(path) != recorded[1]:
        return "its bytes no longer match their SHA-256 (the cache file was damaged or overwritten)"
    return None


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
                  decode: Callable[[Path, bytes], np.ndarray], threads: int, cache_dir: Optional[str]
                  ) -> DecodedArray:
    """The decoded images of ``files`` as a ``DecodedArray``: reused when its key matches and both digests
    of its manifest hold (the images' bytes and the array's bytes), else built now; ``decode(path, data)``
    turns one file's bytes into uint8 [C, H, W]."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(files, mode, shape)
    path, manifest_path = folder / f"{key}.u8", folder / f"{key}.json"
    reason = stale_reason(path, manifest_path, files, len(files) * int(np.prod(shape)), threads)
    if reason is not None:
        if reason != "missing":
            warnings.warn(f"The decoded-image cache {str(path)!r} is not used: {reason}. It is rebuilt from the "
                          "images now.", stacklevel=2)
        try:
            digests = build_array(path, files, shape, decode, threads)
            write_manifest(manifest_path, {"version": CACHE_VERSION, "items": len(files), "shape": list(shape),
                                           "mode": mode, "first_file": str(files[0]) if files else None, **digests})
        except OSError as error:
            raise DataError(f"Cannot write the decoded-image cache in {folder}: {error}. Give a writable folder "
                            "as data.options.cache_dir, or turn the cache off with data.options.cache: false.") from error
    return DecodedArray(path, labels, shape)
