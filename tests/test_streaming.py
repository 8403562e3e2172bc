"""Streaming through a DataLoader with workers gives the in-memory path's batches: same splits, order, items
and augmentation, and a run resumed mid-epoch equals an uninterrupted one."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import peerlearn
from conftest import tiny_config, train_interrupted_at_evaluation
from peerlearn.config import load_config
from peerlearn.data import BatchAugment, BatchStream, Normalizer, load_data
from peerlearn.data.lazy import LazyItems, streamed_channel_stats
from peerlearn.data.prepare import channel_stats


def write_folder(root, classes=3, per_class=25, size=10):
    """Small RGB PNGs, one subfolder per class; pixel values depend on (class, item)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = 40 * c + i  # a class signal
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def folder_config(root, **data):
    return tiny_config(data={"source": "image_folder", "path": str(root), "batch_size": 8, "val_fraction": 0.2,
                             "augment": {"crop_padding": 2, "flip": True}, **data})


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images")


def test_streamed_and_in_memory_give_the_same_splits_and_batches(folder):
    memory = load_data(load_config(folder_config(folder, stream=False)).data, seed=0)
    streamed = load_data(load_config(folder_config(folder, stream=True, stream_workers=2)).data, seed=0)
    assert isinstance(streamed.train.x, LazyItems) and isinstance(memory.train.x, torch.Tensor)
    for split in ("train", "val", "test"):
        ours, theirs = getattr(streamed, split), getattr(memory, split)
        assert torch.equal(ours.y, theirs.y) and torch.equal(ours.x.materialize(), theirs.x)
    assert np.allclose(streamed.mean, memory.mean, atol=1e-6) and np.allclose(streamed.std, memory.std, atol=1e-6)

    normalizer = Normalizer(memory.mean, memory.std, torch.device("cpu"), image=True)
    augment = BatchAugment(crop_padding=2, flip=True)
    streams = [BatchStream(data.train, 8, normalizer, torch.device("cpu"), seed=3, augment=augment, drop_last=True)
               for data in (memory, streamed)]
    assert streams[1].streamed and len(streams[0]) == len(streams[1])
    for epoch in (0, 1):
        batches = [list(stream.epoch(epoch)) for stream in streams]
        assert [s for s, _ in batches[0]] == [s for s, _ in batches[1]] == list(range(len(streams[0])))
        for (_, a), (_, b) in zip(*batches):
            assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    # resuming at a step yields exactly the rest of the epoch
    tail = list(streams[1].epoch(1, start_step=3))
    assert [s for s, _ in tail] == list(range(3, len(streams[1])))
    assert torch.equal(tail[0][1].x, batches[0][3][1].x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_streamed_statistics_equal_in_memory_ones_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (700, 3, 4, 4), dtype=torch.uint8, generator=generator)  # three chunks of items
    x = x if dtype == torch.uint8 else x.float() / 7.3
    items = LazyItems(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), workers=0)
    ours, theirs = streamed_channel_stats(items), channel_stats(x)
    assert ours == theirs  # the same floats, not merely close
    # and the values computed independently, in float64 over all items at once
    values = x.double().div(255.0 if dtype == torch.uint8 else 1.0).transpose(0, 1).reshape(3, -1)
    assert np.allclose(theirs[0], values.mean(1).numpy(), rtol=1e-12, atol=0)
    assert np.allclose(theirs[1], values.std(1).numpy(), rtol=1e-9, atol=0)


def test_tabular_statistics_are_per_feature():
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    mean, std = channel_stats(x)
    assert mean == [3.0, 10.0] and std[0] == 2.0 and std[1] == 1e-6  # a constant feature's std is floored


def test_auto_streams_large_folders_and_user_datasets_only(folder):
    small = load_data(load_config(folder_config(folder)).data, seed=0)
    large = load_data(load_config(folder_config(folder, stream_threshold_mb=0.001)).data, seed=0)
    assert isinstance(small.train.x, torch.Tensor) and isinstance(large.train.x, LazyItems)


class NoisyDigits(Dataset):
    """A user's Dataset: 8x8 float images with random per-item noise drawn in __getitem__ (torch's RNG)."""

    def __init__(self, x, y):
        self.x, self.targets = x.float() / 16.0, y

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i] + 0.05 * torch.randn(self.x[i].shape), int(self.targets[i])


def test_streamed_user_dataset_resumed_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch):
    from peerlearn.data import load_raw

    raw = load_raw(load_config(tiny_config()).data)
    data = peerlearn.UserData(train=NoisyDigits(raw.train_x[:400], raw.train_y[:400]),
                              test=NoisyDigits(raw.test_x[:100], raw.test_y[:100]), num_classes=10)
    # 320 train items / 32 = 10 steps an epoch; checkpoints every 3 steps: the last one before the crash at the
    # end of epoch 2 is at step 18, mid-epoch
    config = tiny_config(recipe="mutual", data={"batch_size": 32, "stream": True, "stream_workers": 2},
                         train={"epochs": 2, "checkpoint_every_steps": 3, "eval_test": False})
    whole = peerlearn.train(config, out=tmp_path / "whole", data=data)
    assert isinstance(whole.recipe.data.train.x, LazyItems)
    train = peerlearn.train
    monkeypatch.setattr(peerlearn, "train", partial(train, data=data))
    broken = train_interrupted_at_evaluation(config, tmp_path / "broken", evaluation=2, monkeypatch=monkeypatch)
    monkeypatch.setattr(peerlearn, "train", train)
    from peerlearn.engine.checkpoint import load_state

    assert load_state(broken / "checkpoint.safetensors")["position"]["step_in_epoch"] == 8
    resumed = peerlearn.train(resume=broken, data=data)
    for name in ("a", "b"):
        ours, theirs = resumed.cohort[name].model.state_dict(), whole.cohort[name].model.state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert resumed.summary["members"] == whole.summary["members"]


def test_streamed_image_folder_trains_like_the_in_memory_one(folder, tmp_path):
    results = [peerlearn.train(folder_config(folder, stream=stream, stream_workers=2), out=tmp_path / str(stream))
               for stream in (False, True)]
    for name in ("a", "b"):
        ours, theirs = (r.cohort[name].model.state_dict() for r in results)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name  # the same weights, bit for bit
    records = [json.loads((r.run_dir / "run.json").read_text())["data"]["normalization"] for r in results]
    assert records[0] == records[1]


def test_user_dataset_streams_by_default_and_reads_into_memory_when_asked():
    from peerlearn.data import load_raw

    raw = load_raw(load_config(tiny_config()).data)

    class Plain(Dataset):  # no `targets`: labels come from one pass over the items
        def __len__(self):
            return 200

        def __getitem__(self, i):
            return raw.train_x[i], int(raw.train_y[i])

    bundles = {}
    for stream in ("auto", False):
        config = load_config(tiny_config(data={"source": "python", "stream": stream, "stream_workers": 0})).data
        user = peerlearn.UserData(train=Plain(), num_classes=10)
        bundles[stream] = load_data(config, seed=0, raw=user.to_raw(config))
    tensors = peerlearn.UserData(train=(raw.train_x[:200], raw.train_y[:200]), num_classes=10)
    config = load_config(tiny_config(data={"source": "python"})).data
    in_memory = load_data(config, seed=0, raw=tensors.to_raw(config))
    assert isinstance(bundles["auto"].train.x, LazyItems) and isinstance(bundles[False].train.x, torch.Tensor)
    for bundle in bundles.values():
        for split in ("train", "val"):
            ours, theirs = getattr(bundle, split), getattr(in_memory, split)
            x = ours.x.materialize() if isinstance(ours.x, LazyItems) else ours.x
            assert torch.equal(ours.y, theirs.y) and torch.equal(x, theirs.x)
        assert len(bundle.test) == 0
