"""scikit-learn's bundled 8x8 digits: the embedded default dataset (no file, no network)."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.data.raw import RawDataset

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 1234  # fixed: the test split of `digits` is the same for every run


def load_digits(config=None) -> RawDataset:
    """Load the 1,797 digits as uint8 images [N, 1, 8, 8] (values 0..16 scaled to 0..255).

    The official package has no test split, so a fixed stratified quarter is held out as test.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    return RawDataset(
        train_x=torch.from_numpy(images[train_idx]),
        train_y=torch.from_numpy(labels[train_idx]),
        test_x=torch.from_numpy(images[test_idx]),
        test_y=torch.from_numpy(labels[test_idx]),
        class_names=[str(d) for d in range(10)],
    )
