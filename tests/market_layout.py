"""Write a tiny dataset in the Market-1501 folder layout, with JPEG names that carry identity and camera.

Each identity wears a top and a bottom of two colours; training identities and test identities use
different colour pairs (re-identification: the test people are never seen in training). Every camera overlays
its own strong stripe pattern, so that an untrained network matches images by camera rather than by person,
and every image gets pixel noise. The gallery also holds junk (-1) and distractor (0000) images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PALETTE = [(200, 30, 30), (30, 180, 30), (30, 30, 200), (210, 210, 40), (190, 40, 190), (40, 190, 190)]
PAIRS = [(a, b) for a in range(len(PALETTE)) for b in range(len(PALETTE)) if a != b]
TRAIN_IDS = [2, 7, 10, 11, 15, 20]
TEST_IDS = [1, 3, 4, 5]
HEIGHT, WIDTH = 32, 16


def camera_pattern(camera: int) -> np.ndarray:
    """[H, W] 0/1 stripes: vertical (camera 1), horizontal (camera 2) or diagonal (camera 3)."""
    rows, cols = np.arange(HEIGHT)[:, None], np.arange(WIDTH)[None, :]
    pattern = {1: cols // 2 % 2 + 0 * rows, 2: rows // 2 % 2 + 0 * cols}.get(camera, (rows + cols) // 3 % 2)
    return pattern.astype(np.float64)


def person(pair: tuple[int, int], camera: int, rng: np.random.Generator) -> np.ndarray:
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.float64)
    image[: HEIGHT // 2] = PALETTE[pair[0]]
    image[HEIGHT // 2:] = PALETTE[pair[1]]
    image = 0.5 * image + 64 + 70 * camera_pattern(camera)[..., None] + rng.normal(0, 12, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _save(folder: Path, identity: int, camera: int, index: int, pixels: np.ndarray) -> None:
    from PIL import Image

    prefix = "-1" if identity < 0 else f"{identity:04d}"
    Image.fromarray(pixels).save(folder / f"{prefix}_c{camera}s1_{index:06d}_00.jpg", quality=95)


def make_market_layout(root: Path, seed: int = 0, per_camera: int = 8) -> Path:
    """Create root/bounding_box_train, root/query, root/bounding_box_test; return root."""
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in ("bounding_box_train", "query", "bounding_box_test")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    pairs = {identity: PAIRS[3 * i] for i, identity in enumerate(TRAIN_IDS + TEST_IDS)}
    index = 0
    for identity in TRAIN_IDS:
        for camera in (1, 2, 3):
            for _ in range(per_camera):
                index += 1
                _save(folders["bounding_box_train"], identity, camera, index, person(pairs[identity], camera, rng))
    for identity in TEST_IDS:
        for camera in (1, 2, 3):
            index += 1
            if camera < 3:
                _save(folders["query"], identity, camera, index, person(pairs[identity], camera, rng))
            for _ in range(2):
                index += 1
                _save(folders["bounding_box_test"], identity, camera, index, person(pairs[identity], camera, rng))
    for _ in range(4):  # junk boxes (noise) and distractors (people of colours nobody else wears)
        index += 1
        _save(folders["bounding_box_test"], -1, 1, index, rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
        index += 1
        _save(folders["bounding_box_test"], 0, 2, index, person(PAIRS[-1], 2, rng))
    (folders["query"] / "Thumbs.db").write_bytes(b"not an image")  # the official archive ships these
    return root
