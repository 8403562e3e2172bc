"""The decoded-image cache of a streamed image folder: built once, read by later epochs and runs with identical
batches, rebuilt when a file changes (even with the same name, size and modification time) or when the
cache's own bytes are damaged, with a warning, and never used with ``cache: false``."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import tiny_config
from peerlearn.config import load_config
from peerlearn.data import BatchAugment, BatchStream, Normalizer, load_data
from peerlearn.data import decoded_cache
from peerlearn.data.decoded_cache import DecodedArray
from peerlearn.data.image_folder import ImageFiles
from peerlearn.data.lazy import LazyItems
from test_streaming import write_folder


def streamed(root, cache_dir, **options):
    config = tiny_config(data={"source": "image_folder", "path": str(root), "batch_size": 8, "val_fraction": 0.2,
                               "stream": True, "stream_workers": 2,
                               "options": {"cache_dir": str(cache_dir), **options}})
    return load_data(load_config(config).data, seed=0)


def epochs(data, count=2):
    normalizer = Normalizer(data.mean, data.std, torch.device("cpu"), image=True)
    stream = BatchStream(data.train, 8, normalizer, torch.device("cpu"), seed=3,
                         augment=BatchAugment(crop_padding=2, flip=True), drop_last=True)
    return [[(s, b.index, b.y, b.x) for s, b in stream.epoch(e)] for e in range(count)]


def assert_same(ours, theirs):
    assert len(ours) == len(theirs) and len(ours[0]) > 0
    for epoch_a, epoch_b in zip(ours, theirs):
        for (s, i, y, x), (t, j, z, w) in zip(epoch_a, epoch_b, strict=True):
            assert s == t and torch.equal(i, j) and torch.equal(y, z) and torch.equal(x, w)


def test_cache_is_reused_across_runs_and_gives_the_batches_of_the_files(tmp_path, monkeypatch):
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    first = streamed(root, cache)
    assert isinstance(first.train.x.dataset, DecodedArray)
    built = sorted(cache.glob("*.u8"))
    assert len(built) == 1 and not list(cache.glob("*.part"))  # one array (class layout), no temp file left
    assert built[0].stat().st_size == 75 * int(np.prod(first.train.x.item_shape))
    uncached = streamed(root, cache, cache=False)
    assert isinstance(uncached.train.x.dataset, ImageFiles)

    # a second run must read the array, not decode a single file
    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache is valid")

    monkeypatch.setattr(decoded_cache, "build_array", no_decoding)
    second = streamed(root, cache)
    reference = epochs(uncached)
    assert_same(epochs(first), reference)
    assert_same(epochs(second), reference)
    for split in ("val", "test"):
        assert torch.equal(getattr(second, split).x.materialize(), getattr(uncached, split).x.materialize())


def test_a_changed_file_invalidates_the_cache(tmp_path):
    from PIL import Image

    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    before = streamed(root, cache).train.x
    changed = root / "class1" / "004.png"
    Image.fromarray(np.full((10, 10, 3), 7, dtype=np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    after = streamed(root, cache).train.x
    assert len(list(cache.glob("*.u8"))) == 2  # a new key, a new array
    uncached = streamed(root, cache, cache=False).train.x
    assert torch.equal(after.materialize(), uncached.materialize())
    assert not torch.equal(before.materialize(), after.materialize())
    position = after.dataset.labels.index(1) + 4  # the changed image, decoded anew
    assert torch.equal(after.dataset[position][0],
                       torch.full(after.item_shape, 7, dtype=torch.uint8))


def test_a_wrong_length_array_is_rebuilt(tmp_path):
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    reference = streamed(root, cache).train.x.materialize()
    array = next(cache.glob("*.u8"))
    array.write_bytes(array.read_bytes()[:100])  # truncated, e.g. by a full disk
    with pytest.warns(UserWarning, match="holds 100 bytes"):
        rebuilt = streamed(root, cache).train.x
    assert torch.equal(rebuilt.materialize(), reference)
    assert array.stat().st_size == 75 * int(np.prod(rebuilt.item_shape))


def test_a_damaged_array_of_the_right_length_is_found_by_its_checksum_and_rebuilt(tmp_path):
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    reference = streamed(root, cache, cache=False).train.x.materialize()
    streamed(root, cache)
    array = next(cache.glob("*.u8"))
    size = array.stat().st_size
    array.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.warns(UserWarning, match="no longer match their SHA-256"):
        rebuilt = streamed(root, cache).train.x
    assert torch.equal(rebuilt.materialize(), reference)
    with pytest.warns(UserWarning, match="no longer match"):  # one flipped byte is enough
        data = bytearray(array.read_bytes())
        data[size // 2] ^= 1
        array.write_bytes(bytes(data))
        assert torch.equal(streamed(root, cache).train.x.materialize(), reference)


def everything(data):
    """Every item of every split, in split order."""
    return torch.cat([getattr(data, split).x.materialize() for split in ("train", "val", "test")])


def test_images_changed_with_the_same_names_sizes_and_mtimes_are_found_by_their_bytes(tmp_path):
    from PIL import Image

    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    for path in sorted((root / "class0").glob("*.png")):  # uncompressed PNGs: equal sizes for equal shapes
        Image.open(path).convert("RGB").save(path, compress_level=0)
    before = everything(streamed(root, cache))
    first, second = root / "class0" / "000.png", root / "class0" / "001.png"
    stat = first.stat()
    first.write_bytes(second.read_bytes())  # other pixels, same name and size ...
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old modification time
    assert (first.stat().st_size, first.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.warns(UserWarning, match="images' bytes changed"):
        after = everything(streamed(root, cache))
    assert len(list(cache.glob("*.u8"))) == 1  # the same key: the array itself was rebuilt
    assert torch.equal(after, everything(streamed(root, cache, cache=False)))
    assert not torch.equal(after, before)


def test_the_manifest_records_both_digests_and_a_missing_one_rebuilds(tmp_path, monkeypatch):
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    data = streamed(root, cache)
    manifest_path = next(cache.glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    array = next(cache.glob("*.u8"))
    assert manifest["array"] == decoded_cache.array_digest(array)
    files = sorted(root.rglob("*.png"))  # the order the cache holds them in
    assert manifest["content"] == decoded_cache.content_digest(files, 1)
    manifest_path.unlink()
    with pytest.warns(UserWarning, match="manifest"):
        streamed(root, cache)
    assert manifest_path.is_file()
    # a valid cache is used without a warning and without decoding
    monkeypatch.setattr(decoded_cache, "build_array", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed(root, cache)


class Noisy(torch.utils.data.Dataset):
    """Items drawing torch randomness in __getitem__ (so their values depend on the per-step seeding)."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.full((2,), float(i)) + torch.randn(2), 0


def test_steps_read_in_groups_do_not_depend_on_the_grouping_or_the_worker_count():
    from peerlearn.data.streaming import steps_per_call, streamed_batches

    items = LazyItems(Noisy(), workers=2)
    assert steps_per_call(items, 4) == 8  # 32-byte batches: the most steps a call may read
    assert steps_per_call(LazyItems(torch.utils.data.TensorDataset(torch.zeros(2, 3, 512, 512)), workers=0), 4) == 1
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    whole = list(streamed_batches(items, order, 4, epoch=1, steps=range(16), seed=5))
    tail = list(streamed_batches(items, order, 4, epoch=1, steps=range(5, 16), seed=5))  # groups start at 5
    here = list(streamed_batches(LazyItems(Noisy(), workers=0), order, 4, epoch=1, steps=range(16), seed=5))
    assert [s for s, _, _ in whole] == list(range(16)) and [s for s, _, _ in tail] == list(range(5, 16))
    for (s, i, x), (t, j, w) in zip(whole[5:], tail, strict=True):
        assert s == t and torch.equal(i, j) and torch.equal(x, w)
    for (_, i, x), (_, j, w) in zip(whole, here, strict=True):
        assert torch.equal(i, j) and torch.equal(x, w)
    assert not torch.equal(whole[0][2][:, 0], whole[0][1].float())


def test_a_bad_cache_option_or_an_unwritable_cache_folder_is_a_data_error(tmp_path):
    import pytest

    from peerlearn.errors import DataError

    root = write_folder(tmp_path / "images", classes=2, per_class=3)
    with pytest.raises(DataError, match="data.options.cache' is 'no'"):
        streamed(root, tmp_path / "cache", cache="no")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="Cannot write the decoded-image cache"):
        streamed(root, blocker / "decoded")
