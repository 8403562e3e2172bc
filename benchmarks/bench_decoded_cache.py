"""What the decoded-image cache's checks cost on an image folder of 10,000 PNGs (CIFAR-like, 32×32 RGB).

Times, in one process: decoding every image (what the cache saves), building the cache (decode, hash the
files' bytes as they are read, hash the array), the old reuse check (the key of paths, sizes and mtimes
alone) and the new one (the key, then the files' bytes and the array's bytes hashed and compared). The
folder is read twice first, so every number is with the files in the OS page cache.

    python -m benchmarks.bench_decoded_cache [--items 10000] [--size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def write_pngs(root: Path, items: int, size: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(items):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth pictures with noise, so the PNGs compress about as much as photographs do
        base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.random(3)[None, None, :]
        pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(pixels).save(path)
        files.append(path)
    return sorted(files)


def timed(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    from peerlearn.data import decoded_cache
    from peerlearn.data.image_folder import read_image, read_images

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        files = write_pngs(root / "images", args.items, args.size)
        shape = (3, args.size, args.size)
        for _ in range(2):
            decoded_cache.content_digest(files, args.threads)  # warm the page cache
        decode = timed(lambda: read_images(files, "RGB", args.size, args.threads), 1)
        path = root / "cache" / "x.u8"
        build = timed(lambda: decoded_cache.build_array(
            path, files, shape, lambda p, data: read_image(p, "RGB", args.size, data), args.threads), 1)
        key = timed(lambda: decoded_cache.cache_key(files, "RGB", shape))
        content = timed(lambda: decoded_cache.content_digest(files, args.threads))
        array = timed(lambda: decoded_cache.array_digest(path))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(f"{args.items} PNGs of {args.size}x{args.size} RGB ({megabytes:.1f} MB of files, "
              f"{path.stat().st_size / 1e6:.1f} MB decoded), {args.threads} threads")
        print(f"  decode every image:                {decode:7.3f} s")
        print(f"  build the cache (decode + hashes): {build:7.3f} s")
        print(f"  old reuse check (key only):        {key:7.3f} s")
        print(f"  new reuse check (key + digests):   {key + content + array:7.3f} s "
              f"(files {content:.3f} s, array {array:.3f} s)")


if __name__ == "__main__":
    main()
