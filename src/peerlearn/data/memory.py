"""Refusing data that cannot fit in memory, before allocating it."""

from __future__ import annotations

import os

from peerlearn.errors import ConfigError

# bytes per image pixel held at once: uint8 images, the float32 batch copy, and a float32 resize buffer
BYTES_PER_PIXEL = 1 + 4 + 4


def available_memory() -> int:
    """Bytes the machine can still give (MemAvailable on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_images_fit(items: int, channels: int, height: int, width: int, key: str = "data.image_size") -> None:
    """Raise ``ConfigError`` naming ``key`` when ``items`` images of that size cannot be held in memory.

    Estimate: items · channels · height · width · ``BYTES_PER_PIXEL`` against the available memory."""
    need = items * channels * height * width * BYTES_PER_PIXEL
    have = available_memory()
    if need > have:
        raise ConfigError(
            f"Invalid config: key {key!r} asks for {items} images of {channels}x{height}x{width}, which need about "
            f"{need / 2**30:.1f} GiB, but only {have / 2**30:.1f} GiB of memory is available. Choose a smaller size."
        )
