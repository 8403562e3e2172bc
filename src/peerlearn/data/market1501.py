"""Market-1501 person re-identification, from the official folder (``data.path``)::

    path/bounding_box_train/0002_c1s1_000451_03.jpg   12,936 images of 751 identities: the training set
    path/query/0001_c1s1_001051_00.jpg                  3,368 query images of 750 test identities
    path/bounding_box_test/-1_c1s1_000401_03.jpg       19,732 gallery images (identity −1: junk, 0000: distractor)

A name reads ``<identity>_c<camera>s<sequence>_<frame>_<box>.jpg``. Training is identity classification
(751-way on the official data): identities of ``bounding_box_train`` are numbered 0..K−1 in sorted order and the
class names are the 4-digit identities. There is no classification test set (the test identities are new), so
the test split is empty; the re-id test is retrieval of ``query`` in ``bounding_box_test``, held in
``DataBundle.retrieval["query"]`` and ``["gallery"]`` with every image's identity and camera
(see ``peerlearn.evaluate.retrieval`` for the protocol).

Options: ``height`` (128) and ``width`` (64) of the decoded images (``data.image_size`` instead makes them
square), ``mode`` (RGB or L), ``workers`` (decoding threads).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from peerlearn.data.bundle import RetrievalSplit
from peerlearn.data.image_folder import MODES, read_images
from peerlearn.data.raw import RawDataset
from peerlearn.errors import DataError

FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
DEFAULT_HEIGHT, DEFAULT_WIDTH = 128, 64


def parse_name(name: str) -> tuple[int, int]:
    """(identity, camera) of a Market-1501 file name; ``DataError`` for a name of another form."""
    match = NAME.match(name)
    if match is None:
        raise DataError(f"The Market-1501 file name {name!r} does not have the form "
                        "<identity>_c<camera>s<sequence>_<frame>_<box>.jpg (e.g. 0001_c1s1_001051_00.jpg).")
    return int(match.group(1)), int(match.group(2))


def list_folder(folder: Path) -> tuple[list[Path], list[int], list[int]]:
    """The .jpg files of one Market folder, sorted by name, with their identities and cameras."""
    if not folder.is_dir():
        raise DataError(f"The Market-1501 folder {folder} is missing: data.path must hold "
                        f"{', '.join(FOLDERS.values())}.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.is_file())
    if not files:
        raise DataError(f"The Market-1501 folder {folder} holds no .jpg image.")
    parsed = [parse_name(p.name) for p in files]
    return files, [i for i, _ in parsed], [c for _, c in parsed]


def _options(config) -> tuple[str, tuple[int, int], int]:
    options = getattr(config, "options", None) or {}
    mode = str(options.get("mode", "RGB"))
    if mode not in MODES:
        raise DataError(f"Invalid config: key 'data.options.mode' is {mode!r}; allowed: 'RGB', 'L'.")
    height, width = int(options.get("height", DEFAULT_HEIGHT)), int(options.get("width", DEFAULT_WIDTH))
    if getattr(config, "image_size", None):
        height = width = int(config.image_size)
    if height <= 0 or width <= 0:
        raise DataError(f"Invalid config: data.options.height and width must be positive, got {height}x{width}.")
    return mode, (height, width), int(options.get("workers", min(8, os.cpu_count() or 1)))


def load_market1501(config) -> RawDataset:
    """Read the three Market-1501 folders under ``data.path`` (layout in the module docstring)."""
    if not getattr(config, "path", None):
        raise DataError("Invalid config: key 'data.path' is required by the source 'market1501' (the folder "
                        "holding bounding_box_train, query and bounding_box_test).")
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise DataError(f"The Market-1501 folder {root} (data.path) does not exist or is not a folder.")
    missing = [name for name in FOLDERS.values() if not (root / name).is_dir()]
    if missing:
        raise DataError(f"The Market-1501 folder {root} lacks {', '.join(missing)}: data.path must hold "
                        f"{', '.join(FOLDERS.values())}.")
    mode, size, workers = _options(config)
    files, identities, _ = list_folder(root / FOLDERS["train"])
    keep = [i for i, identity in enumerate(identities) if identity > 0]  # no junk/distractors in training
    files, identities = [files[i] for i in keep], [identities[i] for i in keep]
    classes = sorted(set(identities))
    index = {identity: c for c, identity in enumerate(classes)}
    train_x = read_images(files, mode, size, workers)
    train_y = torch.tensor([index[i] for i in identities], dtype=torch.int64)
    retrieval = {}
    for part in ("query", "gallery"):
        part_files, part_ids, part_cams = list_folder(root / FOLDERS[part])
        retrieval[part] = RetrievalSplit(read_images(part_files, mode, size, workers),
                                         torch.tensor(part_ids, dtype=torch.int64),
                                         torch.tensor(part_cams, dtype=torch.int64),
                                         [str(f) for f in part_files])
    empty = torch.zeros((0, *train_x.shape[1:]), dtype=torch.uint8)
    return RawDataset(train_x, train_y, empty, torch.zeros(0, dtype=torch.int64),
                      class_names=[f"{i:04d}" for i in classes],
                      extras={"train_files": [str(f) for f in files], "retrieval": retrieval})
