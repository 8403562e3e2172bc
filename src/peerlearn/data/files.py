"""Where official dataset files live, how they are checked, and how missing ones are fetched.

Every official file has a known MD5 and download URL (``OFFICIAL_FILES``). A loader asks for a
file with ``official_file(config, source, relative_path)``: the file is looked up under the data
root, its checksum verified, and, when it is missing and ``data.download`` is true, downloaded
atomically (to a temporary file that is renamed into place only once its checksum is right).

The data root is ``data.root`` if set, else ``$PEERLEARN_DATA``, else ``~/.cache/peerlearn``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from peerlearn.errors import DataError

if TYPE_CHECKING:
    from peerlearn.data.registry import SourceSpec

DATA_ROOT_ENV = "PEERLEARN_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/peerlearn")
DOWNLOAD_TIMEOUT_S = 20.0
CHUNK_BYTES = 1 << 20

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class OfficialFile:
    """One file of an official dataset release: where it goes under the root, its MD5, its URL."""

    relative_path: str
    md5: str
    url: str


def _idx_files(folder: str, base_url: str, md5s: dict[str, str]) -> tuple[OfficialFile, ...]:
    """The four IDX files of an MNIST-format release, stored under ``<root>/<folder>/``."""
    return tuple(OfficialFile(f"{folder}/{name}", md5, base_url + name) for name, md5 in md5s.items())


OFFICIAL_FILES: dict[str, tuple[OfficialFile, ...]] = {
    "mnist": _idx_files("mnist", MNIST_URL, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": _idx_files("fashion-mnist", FASHION_MNIST_URL, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": (
        OfficialFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                     CIFAR_URL + "cifar-10-python.tar.gz"),
    ),
    "cifar100": (
        OfficialFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                     CIFAR_URL + "cifar-100-python.tar.gz"),
    ),
}

# A CIFAR archive that the user has already extracted is accepted in place of the tarball.
EXTRACTED_FOLDERS: dict[str, str] = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

_MD5_CACHE: dict[tuple[str, int, int], str] = {}


# --------------------------------------------------------------------------- paths and checksums
def resolve_data_root(config=None) -> Path:
    """The data directory: ``config.root``, else ``$PEERLEARN_DATA``, else ``~/.cache/peerlearn``."""
    root = getattr(config, "root", None) or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def verify_enabled(config) -> bool:
    """Whether MD5 checksums are checked (``data.options.verify``, default true)."""
    options = getattr(config, "options", None) or {}
    return bool(options.get("verify", True))


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks; cached per (path, size, mtime) within the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(chunk)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def check_md5(path: Path, expected: str, url: Optional[str] = None) -> None:
    """Raise ``DataError`` if the file's MD5 differs from ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        fetch = f" Delete it and download it again from {url}" if url else " Replace it with a good copy"
        raise DataError(
            f"The file {path} is truncated or corrupted: its MD5 is {actual}, but the official file's MD5 is "
            f"{expected}.{fetch} (or set data.options.verify=false to skip this check for a file you made yourself)."
        )


# --------------------------------------------------------------------------- fetching
def ensure_file(root: Path, relative_path: str, md5: Optional[str], url: str, download: bool) -> Path:
    """Return ``root / relative_path``, checked against ``md5`` (skipped when ``md5`` is None).

    A missing file is downloaded from ``url`` when ``download`` is true; otherwise, or when the
    download fails, ``DataError`` says which file to put where and where to get it.
    """
    target = Path(root).expanduser() / relative_path
    if target.is_file():
        if md5:
            check_md5(target, md5, url)
        return target
    if not download:
        raise DataError(_missing_message(target, url, "data.download is false"))
    try:
        _download(url, target, md5)
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DataError(_missing_message(target, url, f"the download failed: {error}")) from error
    return target


def _missing_message(target: Path, url: str, reason: str) -> str:
    """The message for a missing official file: what to put where, and where to get it."""
    return (
        f"The dataset file {target} is missing and was not downloaded ({reason}). "
        f"Download {url} and save it as {target}, or set data.root (or ${DATA_ROOT_ENV}) to a folder "
        f"that holds it; with a network, data.download=true fetches it."
    )


def _download(url: str, target: Path, md5: Optional[str]) -> None:
    """Stream ``url`` into a temporary file beside ``target``, check its MD5, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    temp = Path(temp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
        if md5 and digest.hexdigest() != md5:
            raise DataError(
                f"The download of {url} is truncated or corrupted: its MD5 is {digest.hexdigest()}, expected {md5}. "
                f"Nothing was saved at {target}; try again, or download it by hand and save it there."
            )
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def official_entry(source: str, relative_path: str) -> OfficialFile:
    """The table entry of one official file of ``source``."""
    for entry in OFFICIAL_FILES.get(source, ()):
        if entry.relative_path == relative_path:
            return entry
    raise KeyError(f"{relative_path!r} is not an official file of {source!r}")


def official_file(config, source: str, relative_path: str) -> Path:
    """Path of an official file of ``source`` under the config's data root, verified or fetched."""
    entry = official_entry(source, relative_path)
    md5 = entry.md5 if verify_enabled(config) else None
    download = bool(getattr(config, "download", False))
    return ensure_file(resolve_data_root(config), entry.relative_path, md5, entry.url, download)


# --------------------------------------------------------------------------- listing and verifying
def list_sources() -> list[tuple[str, "SourceSpec"]]:
    """Every dataset source as (name, spec), sorted by name; ``spec`` has description, needs_path, files."""
    from peerlearn.data.registry import SOURCES

    return sorted(SOURCES.items())


def file_status(path: Path, md5: str) -> str:
    """``ok``, ``missing`` or ``corrupted`` for one file."""
    if not path.is_file():
        return "missing"
    return "ok" if md5_of(path) == md5 else "corrupted"


def verify_source(name: str, config=None) -> list[tuple[str, str]]:
    """Check the official files of source ``name``: a list of (file path, ok/missing/corrupted).

    Sources without official files (embedded or user folders) give an empty list. A CIFAR archive
    that is missing but already extracted under the root is reported as the folder, ``ok``.
    """
    from peerlearn.data.registry import SOURCES

    if name not in SOURCES:
        raise DataError(f"Unknown dataset source {name!r}; known sources: {', '.join(sorted(SOURCES))}.")
    root = resolve_data_root(config)
    results = []
    for entry in OFFICIAL_FILES.get(name, ()):
        path = root / entry.relative_path
        status = file_status(path, entry.md5)
        extracted = root / EXTRACTED_FOLDERS[name] if name in EXTRACTED_FOLDERS else None
        if status == "missing" and extracted is not None and extracted.is_dir():
            results.append((str(extracted), "ok"))
        else:
            results.append((str(path), status))
    return results
