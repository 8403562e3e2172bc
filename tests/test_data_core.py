"""Splits, labelled subsets, batched augmentation and batch streams."""

import pytest
import torch

from peerlearn.config import DataConfig
from peerlearn.data import BatchAugment, BatchStream, Normalizer, Split, load_data
from peerlearn.data.augment import random_translate
from peerlearn.data.splits import labelled_mask, stratified_subset, validation_split


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.arange(1000) % 10
    train, val = validation_split(labels, 0.2, seed=3)
    assert len(val) == 200 and len(set(train.tolist()) & set(val.tolist())) == 0
    assert torch.bincount(labels[val]).tolist() == [20] * 10
    assert torch.equal(val, validation_split(labels, 0.2, seed=3)[1])
    assert not torch.equal(val, validation_split(labels, 0.2, seed=4)[1])


def test_subset_and_labelled_mask_fraction_and_count():
    labels = torch.arange(600) % 6
    subset = stratified_subset(labels, 60, seed=0)
    assert torch.bincount(labels[subset]).tolist() == [10] * 6
    assert labelled_mask(labels, 0.1, seed=0).sum() == 60
    per_class = labelled_mask(labels, 5, seed=0)
    assert torch.bincount(labels[per_class]).tolist() == [5] * 6


def test_translate_moves_content_and_fills_zeros():
    image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    image[0, 0, 2, 2] = 255
    seen = set()
    for seed in range(40):
        out = random_translate(image, 1, torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and out.sum() == 255
        seen.add(tuple((out[0, 0] == 255).nonzero()[0].tolist()))
    assert len(seen) == 9  # every offset in [-1, 1]²


def test_augment_is_batched_and_deterministic_per_generator():
    images = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    augment = BatchAugment(crop_padding=2, flip=True, jitter=1)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == images.shape and not torch.equal(a, images)
    flipped = BatchAugment(flip=True)(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images))


def test_stream_orders_each_epoch_by_seed_and_resumes_mid_epoch():
    split = Split(torch.randint(0, 255, (50, 1, 4, 4), dtype=torch.uint8), torch.arange(50) % 5)
    norm = Normalizer([0.5], [0.25], torch.device("cpu"), image=True)
    stream = BatchStream(split, 8, norm, torch.device("cpu"), seed=1, augment=BatchAugment(jitter=1), drop_last=True)
    assert len(stream) == 6
    full = [b for _, b in stream.epoch(2)]
    tail = [b for _, b in stream.epoch(2, start_step=3)]
    for x, y in zip(full[3:], tail):
        assert torch.equal(x.x, y.x) and torch.equal(x.index, y.index)
    assert not torch.equal(full[0].index, next(iter(stream.epoch(3)))[1].index)
    assert torch.allclose(norm(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)), torch.tensor(2.0))


def test_load_digits_bundle_has_stats_and_hidden_labels():
    bundle = load_data(DataConfig(source="digits", val_fraction=0.2, labelled=0.5), seed=0)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 8, 8)
    assert len(bundle.train) + len(bundle.val) == 1347 and len(bundle.test) == 450
    assert 0.45 < bundle.train.labelled_fraction < 0.55
    assert (bundle.train_labels_full >= 0).all()
    assert 0 < bundle.mean[0] < 1 and bundle.std[0] > 0


def test_train_subset_larger_than_data_is_a_clear_error():
    from peerlearn.errors import DataError

    with pytest.raises(DataError, match="train_subset"):
        load_data(DataConfig(source="digits", train_subset=5000), seed=0)
