"""Turn a ``DataConfig`` into a ``DataBundle``: load, subset, split, hide labels, compute stats."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from peerlearn.data.bundle import DataBundle, Split
from peerlearn.data.lazy import LazyItems
from peerlearn.data.memory import check_images_fit
from peerlearn.data.raw import RawDataset
from peerlearn.data.registry import SOURCES
from peerlearn.data.statistics import input_statistics
from peerlearn.data.splits import labelled_mask, stratified_subset, validation_split
from peerlearn.errors import DataError


def load_raw(config) -> RawDataset:
    """Load the official train/test parts of ``config.source``."""
    spec = SOURCES[config.source]
    if spec.needs_path and not config.path:
        raise DataError(f"Invalid config: key 'data.path' is required by the source {config.source!r} (a folder or file).")
    raw = spec.load_function()(config)
    if len(raw.train_y) == 0:
        raise DataError(f"The dataset {config.source!r} has no training items.")
    return raw


RESIZE_CHUNK = 10_000  # images resized at a time: bounds the float copies (31 MiB at 28×28)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of images [N, C, H, W] to size x size, ``RESIZE_CHUNK`` images at a time (each image is
    resized on its own, so chunking changes no value); uint8 images stay uint8 (rounded), float images (data
    given from Python) stay float. Streamed items are not resized (the Dataset delivers its size)."""
    if isinstance(images, LazyItems):
        if tuple(images.shape[-2:]) != (size, size):
            raise DataError(f"Invalid config: key 'data.image_size' is {size}, but the streamed images are "
                            f"{tuple(images.shape[-2:])}; resize them in the Dataset (streamed data is not resized).")
        return images
    if images.shape[0] == 0:  # an empty split (e.g. a re-id source has no classification test set)
        return images.new_zeros((0, images.shape[1], size, size))
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.empty((images.shape[0], images.shape[1], size, size), dtype=images.dtype)
    for start in range(0, images.shape[0], RESIZE_CHUNK):
        chunk = F.interpolate(images[start:start + RESIZE_CHUNK].float(), size=(size, size), mode="bilinear",
                              align_corners=False)
        resized[start:start + RESIZE_CHUNK] = chunk.round_().clamp_(0, 255) if images.dtype == torch.uint8 else chunk
    return resized


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of images in 0..1 units, or per-feature for tabular data
    (``peerlearn.data.statistics.input_statistics``: the same chunks and sums for tensors and streamed
    ``LazyItems``); float images are taken as given (not divided by 255)."""
    stats = input_statistics(x)
    return stats.mean, stats.std


def _size_fraction(size: int, total: int) -> float:
    if size >= total:
        raise DataError(f"Invalid config: key 'data.val_size' has the value {size}, but there are only {total} "
                        "training items; leave some for training.")
    return size / total


def _held_out_validation(x: torch.Tensor, y: torch.Tensor, kept: torch.Tensor, size: int, seed: int) -> Split:
    """A stratified, seeded validation split of ``size`` items among those not in ``kept``."""
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[kept] = False
    rest_idx = rest.nonzero().flatten()
    if size > len(rest_idx):
        raise DataError(f"Invalid config: key 'data.val_size' has the value {size}, but only {len(rest_idx)} "
                        "training items are left outside data.train_subset.")
    chosen = rest_idx[stratified_subset(y[rest_idx], size, seed=seed + 202)]
    return Split(x[chosen], y[chosen])


def _require_two_classes(labels: torch.Tensor, config) -> None:
    """A classifier needs at least two classes among the training labels (``DataError`` naming the data)."""
    present = torch.unique(labels[labels >= 0])
    if len(present) < 2:
        where = f"{config.source!r}" + (f" ({config.path})" if getattr(config, "path", None) else "")
        raise DataError(f"The dataset {where} has {len(present)} class among its training items; a classifier "
                        "(and a transfer set) needs at least two. Check the labels or the class folders.")


def load_data(config, seed: int, raw: RawDataset | None = None) -> DataBundle:
    """Build the splits that a run trains and evaluates on.

    The validation split is a stratified, seeded fraction of the (sub-sampled) training set (or
    ``val_size`` items; with ``train_subset``, drawn from the training items outside the subset); the
    test split is the source's official test set and is only ever used for reporting.
    ``raw`` replaces the source (data given from Python); a validation split it brings
    (``raw.extras["val"]`` = (x, y)) is used as is.
    """
    raw = load_raw(config) if raw is None else raw
    given_val = raw.extras.get("val")
    train_x, train_y = raw.train_x, raw.train_y
    test_x, test_y = raw.test_x, raw.test_y
    resize = bool(config.image_size and raw.is_image)  # after sub-sampling: only the items kept are resized
    if config.train_subset is not None:
        if config.train_subset > len(train_y):
            raise DataError(
                f"Invalid config: key 'data.train_subset' has the value {config.train_subset}, but the source "
                f"{config.source!r} has only {len(train_y)} training items."
            )
        keep = stratified_subset(train_y, config.train_subset, seed=seed + 101)
        if config.val_size is not None:  # validation from the items the subset left out
            val = _held_out_validation(train_x, train_y, keep, config.val_size, seed)
            if resize:
                val = Split(resize_images(val.x, config.image_size), val.y)
        train_x, train_y = train_x[keep], train_y[keep]
    if resize:
        if not isinstance(train_x, LazyItems):  # streamed items are never held in memory at once
            check_images_fit(len(train_x) + len(test_x), train_x.shape[1], config.image_size, config.image_size)
        train_x, test_x = resize_images(train_x, config.image_size), resize_images(test_x, config.image_size)
    if given_val is not None:
        train, val = Split(train_x, train_y.clone()), Split(*given_val)
    elif config.val_size is not None and config.train_subset is not None:
        train = Split(train_x, train_y.clone())
    else:
        fraction = config.val_fraction if config.val_size is None else _size_fraction(config.val_size, len(train_y))
        train_idx, val_idx = validation_split(train_y, fraction, seed=seed + 202)
        train = Split(train_x[train_idx], train_y[train_idx].clone())
        val = Split(train_x[val_idx], train_y[val_idx])
    _require_two_classes(train.y, config)
    full_labels = train.y.clone()
    if config.labelled is not None:
        mask = labelled_mask(train.y, config.labelled, seed=seed + 303)
        train.y[~mask] = -1
    retrieval = dict(raw.extras.get("retrieval", {}))
    if config.image_size and raw.is_image:
        for key, part in retrieval.items():
            retrieval[key] = replace(part, x=resize_images(part.x, config.image_size))
    stats = input_statistics(train.x)
    mean, std = stats.mean, stats.std
    if not config.normalize:  # images stay in 0..1, features as given
        mean, std = [0.0] * len(mean), [1.0] * len(std)
    return DataBundle(
        name=config.source,
        train=train,
        val=val,
        test=Split(test_x, test_y),
        class_names=raw.class_names,
        mean=mean,
        std=std,
        train_labels_full=full_labels,
        retrieval=retrieval,
        value_range=(stats.low, stats.high),
        feature_names=list(raw.extras.get("feature_names") or []) or None,
    )
