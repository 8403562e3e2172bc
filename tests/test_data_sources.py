"""Dataset sources on files written in each official format: IDX, CIFAR pickles, image folders.

Real MNIST / Fashion-MNIST are found only through $PEERLEARN_DATA (CI points it at ../shared/data),
falling back to the repository's sibling folder ``shared/data``; that test skips when neither exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from peerlearn.config import DataConfig
from peerlearn.data import files as data_files
from peerlearn.data.cifar import SafeUnpickler, load_cifar10, load_cifar100
from peerlearn.data.files import (
    MNIST_URL, OFFICIAL_FILES, ensure_file, list_sources, md5_of, resolve_data_root, verify_source,
)
from peerlearn.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, load_mnist, read_idx
from peerlearn.data.image_folder import load_image_folder
from peerlearn.data.prepare import load_raw
from peerlearn.data.registry import SOURCES
from peerlearn.errors import DataError


def make_config(source: str, root: Path | None = None, **kwargs) -> DataConfig:
    """A DataConfig for tests: never downloads; generated files skip the official MD5 by default."""
    options = kwargs.pop("options", {"verify": False})
    return DataConfig(source=source, root=str(root) if root else None, download=False, options=options, **kwargs)


# --------------------------------------------------------------------------- IDX writers
def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0x0000, type 0x08, ndim, big-endian dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int = 12, n_test: int = 5, size: int = 28) -> dict:
    """Write the four gzipped IDX files of an MNIST-format dataset; return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


@pytest.mark.parametrize("loader, source, folder, class_names", [
    (load_mnist, "mnist", "mnist", [str(d) for d in range(10)]),
    (load_fashion_mnist, "fashion_mnist", "fashion-mnist", FASHION_MNIST_CLASSES),
])
def test_idx_loaders_read_official_layout(tmp_path, loader, source, folder, class_names):
    arrays = write_idx_dataset(tmp_path / folder)
    raw = loader(make_config(source, tmp_path))
    assert raw.train_x.shape == (12, 1, 28, 28) and raw.test_x.shape == (5, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert torch.equal(raw.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]))
    assert raw.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert raw.test_y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    assert raw.class_names == class_names
    assert load_raw(make_config(source, tmp_path)).train_x.shape == raw.train_x.shape  # through the registry


def test_fashion_class_names():
    assert FASHION_MNIST_CLASSES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_read_idx_plain_and_wider_types(tmp_path):
    plain = tmp_path / "plain-idx2-ubyte"
    plain.write_bytes(idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)))
    assert read_idx(plain).tolist() == [[0, 1, 2], [3, 4, 5]]
    ints = tmp_path / "ints-idx1-int"
    ints.write_bytes(struct.pack(">HBBI", 0, 0x0C, 1, 3) + np.array([1, -2, 300000], dtype=">i4").tobytes())
    assert read_idx(ints).tolist() == [1, -2, 300000]


def test_read_idx_bad_magic_names_file(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + b"\x00" * 16))
    with pytest.raises(DataError, match=r"bad\.gz.*not an IDX file"):
        read_idx(bad)


def test_read_idx_truncated_names_file(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8)))
    short_gz = tmp_path / "short.gz"
    short_gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"short\.gz.*(truncated|corrupted)"):
        read_idx(short_gz)
    short_plain = tmp_path / "short-idx3-ubyte"
    short_plain.write_bytes(idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))[:-10])
    with pytest.raises(DataError, match=r"short-idx3-ubyte is truncated"):
        read_idx(short_plain)


def test_idx_labels_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8))))
    with pytest.raises(DataError, match="12 images but .* 3 labels"):
        load_mnist(make_config("mnist", tmp_path))


# --------------------------------------------------------------------------- checksums and fetching
def test_checksum_mismatch_names_file_and_md5s(tmp_path):
    write_idx_dataset(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    good_md5 = md5_of(path)
    path.write_bytes(path.read_bytes()[:-20])  # truncate
    bad_md5 = md5_of(path)
    with pytest.raises(DataError) as info:
        ensure_file(tmp_path, "mnist/train-images-idx3-ubyte.gz", good_md5, MNIST_URL, download=False)
    message = str(info.value)
    assert str(path) in message and good_md5 in message and bad_md5 in message
    assert "truncated or corrupted" in message


def test_official_md5_is_checked_by_default(tmp_path):
    write_idx_dataset(tmp_path / "mnist")  # right format, but not the official bytes
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is truncated or corrupted.*f68b3c2d"):
        load_mnist(make_config("mnist", tmp_path, options={}))


def test_missing_file_without_download_names_path_and_url(tmp_path):
    with pytest.raises(DataError) as info:
        load_fashion_mnist(make_config("fashion_mnist", tmp_path))
    message = str(info.value)
    expected = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    assert str(expected) in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in message


def test_download_is_checked_and_atomic(tmp_path):
    source = tmp_path / "server" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(b"payload" * 1000)
    url = source.as_uri()
    root = tmp_path / "root"
    with pytest.raises(DataError, match="truncated or corrupted"):
        ensure_file(root, "sub/file.bin", "0" * 32, url, download=True)
    assert list((root / "sub").iterdir()) == []  # nothing half-written is left behind
    path = ensure_file(root, "sub/file.bin", md5_of(source), url, download=True)
    assert path == root / "sub" / "file.bin" and path.read_bytes() == source.read_bytes()


def test_failed_download_says_where_to_put_file(tmp_path):
    url = (tmp_path / "nowhere.gz").as_uri()
    with pytest.raises(DataError) as info:
        ensure_file(tmp_path, "x/nowhere.gz", None, url, download=True)
    assert str(tmp_path / "x" / "nowhere.gz") in str(info.value) and url in str(info.value)


def test_resolve_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERLEARN_DATA", str(tmp_path / "env"))
    assert resolve_data_root(make_config("mnist", tmp_path / "cfg")) == tmp_path / "cfg"
    assert resolve_data_root(make_config("mnist")) == tmp_path / "env"
    monkeypatch.delenv("PEERLEARN_DATA")
    assert resolve_data_root(make_config("mnist")) == Path("~/.cache/peerlearn").expanduser()


def test_file_table_matches_registry_and_urls():
    for name, spec in SOURCES.items():
        assert tuple(f.relative_path for f in OFFICIAL_FILES.get(name, ())) == spec.files, name
    assert all(f.url.startswith(MNIST_URL) for f in OFFICIAL_FILES["mnist"])
    assert OFFICIAL_FILES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert OFFICIAL_FILES["cifar100"][0].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def test_list_and_verify_sources(tmp_path):
    sources = list_sources()
    assert [name for name, _ in sources] == sorted(SOURCES) and "cifar10" in dict(sources)
    assert dict(sources)["mnist"].files and not dict(sources)["digits"].files
    write_idx_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    statuses = dict(verify_source("mnist", make_config("mnist", tmp_path)))
    assert statuses[str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")] == "corrupted"
    assert statuses[str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz")] == "missing"
    assert verify_source("digits", make_config("digits", tmp_path)) == []
    with pytest.raises(DataError, match="Unknown dataset source"):
        verify_source("imagenet-22k")


# --------------------------------------------------------------------------- CIFAR writers
class Py2StylePickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did for the official CIFAR batches (protocol 2).

    Python 2 ``str`` (our bytes and str) become BINSTRING opcodes, which ``encoding='bytes'`` reads
    back as bytes; numpy's array reconstructor is named ``numpy.core.multiarray`` as in numpy 1.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_pickle(obj) -> bytes:
    """``obj`` pickled the way the official (Python 2) CIFAR files are."""
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(labels: list[int], label_key: bytes) -> dict:
    """A batch dict like the official ones: R plane = 10*label, G = 1, B = 2."""
    n = len(labels)
    planes = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    planes[:, 0] = (np.array(labels, dtype=np.uint8) * 10)[:, None, None]
    planes[:, 1], planes[:, 2] = 1, 2
    return {b"batch_label": b"testing batch", label_key: labels, b"data": planes.reshape(n, -1),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar10(root: Path, extracted: bool = False, evil_batch: object = None) -> Path:
    """CIFAR-10 in the official layout (5 train batches of 4, test of 3), as a .tar.gz or a folder."""
    members = {f"data_batch_{i}": cifar_batch([(i + j) % 10 for j in range(4)], b"labels") for i in range(1, 6)}
    members["test_batch"] = cifar_batch([0, 5, 9], b"labels")
    members["batches.meta"] = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    if evil_batch is not None:
        members["data_batch_1"] = evil_batch
    return write_archive(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", members, extracted)


def write_cifar100(root: Path) -> Path:
    """CIFAR-100 in the official layout (train of 6, test of 2) as a .tar.gz."""
    def batch(fine):
        data = cifar_batch(fine, b"fine_labels")
        data[b"coarse_labels"] = [f // 5 for f in fine]
        return data

    members = {
        "train": batch([0, 1, 50, 99, 42, 7]),
        "test": batch([99, 3]),
        "meta": {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                 b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]},
    }
    return write_archive(root, "cifar-100-python", "cifar-100-python.tar.gz", members, extracted=False)


def write_archive(root: Path, folder: str, archive: str, members: dict, extracted: bool) -> Path:
    """Pickle each member (Python 2 style) into ``folder/`` or into a tar.gz of that folder."""
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        (root / folder).mkdir()
        for name, obj in members.items():
            (root / folder / name).write_bytes(py2_pickle(obj))
        return root / folder
    with tarfile.open(root / archive, "w:gz") as tar:
        for name, obj in members.items():
            data = py2_pickle(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root / archive


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def check_cifar10(raw) -> None:
    assert raw.train_x.shape == (20, 3, 32, 32) and raw.test_x.shape == (3, 3, 32, 32)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert raw.train_y[:4].tolist() == [1, 2, 3, 4] and raw.test_y.tolist() == [0, 5, 9]
    assert torch.equal(raw.train_x[:, 0, 5, 7], (raw.train_y * 10).to(torch.uint8))  # planes are R, G, B
    assert bool((raw.train_x[:, 1] == 1).all()) and bool((raw.train_x[:, 2] == 2).all())
    assert raw.class_names == CIFAR10_NAMES


def test_cifar10_from_tarball(tmp_path):
    write_cifar10(tmp_path)
    check_cifar10(load_cifar10(make_config("cifar10", tmp_path)))


def test_cifar10_from_extracted_folder(tmp_path):
    write_cifar10(tmp_path, extracted=True)
    check_cifar10(load_cifar10(make_config("cifar10", tmp_path, options={})))  # no tarball, no md5 to check


def test_cifar10_tarball_md5_checked_when_verifying(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz is truncated or corrupted.*c58f30108f"):
        load_cifar10(make_config("cifar10", tmp_path, options={}))


def test_cifar10_truncated_tarball(tmp_path):
    archive = write_cifar10(tmp_path)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*(truncated|corrupted)"):
        load_cifar10(make_config("cifar10", tmp_path))


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100(tmp_path)
    raw = load_cifar100(make_config("cifar100", tmp_path))
    assert raw.train_x.shape == (6, 3, 32, 32) and raw.test_x.shape == (2, 3, 32, 32)
    assert raw.train_y.tolist() == [0, 1, 50, 99, 42, 7] and raw.test_y.tolist() == [99, 3]
    assert raw.class_names == [f"fine{i}" for i in range(100)]
    coarse = load_cifar100(make_config("cifar100", tmp_path, options={"verify": False, "labels": "coarse"}))
    assert coarse.train_y.tolist() == [0, 0, 10, 19, 8, 1] and len(coarse.class_names) == 20


class RunsShellCommand:
    """Pickles into a call of os.system: what a malicious archive would contain."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_in_cifar_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path / "data", evil_batch={b"data": RunsShellCommand(f"touch {marker}")})
    with pytest.raises(DataError, match=r"Refusing to load .*data_batch_1.*system"):
        load_cifar10(make_config("cifar10", tmp_path / "data"))
    assert not marker.exists()


def test_safe_unpickler_allows_arrays_only():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for data in (py2_pickle({b"data": array}), pickle.dumps({b"data": array}, protocol=4)):
        loaded = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        assert np.array_equal(loaded[b"data"], array) and loaded[b"data"].dtype == np.uint8
    for forbidden in (print, Path("x"), eval):
        with pytest.raises(DataError, match="Refusing"):
            SafeUnpickler(io.BytesIO(pickle.dumps(forbidden, protocol=4)), encoding="bytes").load()


# --------------------------------------------------------------------------- image folders
COLOURS = {"cat": (200, 10, 30), "dog": (5, 120, 250), "emu": (90, 90, 90)}


def write_image_folder(folder: Path, counts: dict[str, int], size: int = 16, ext: str = "png") -> None:
    """One solid-coloured image per file, in one subfolder per class."""
    from PIL import Image

    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (size, size), COLOURS[name]).save(folder / name / f"{i}.{ext}")


def test_image_folder_with_train_and_test(tmp_path):
    write_image_folder(tmp_path / "train", {"cat": 3, "dog": 2, "emu": 2})
    write_image_folder(tmp_path / "test", {"cat": 1, "dog": 1}, ext="bmp")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    raw = load_image_folder(make_config("image_folder", path=str(tmp_path), options={"size": 16}))
    assert raw.class_names == ["cat", "dog", "emu"]
    assert raw.train_x.shape == (7, 3, 16, 16) and raw.train_x.dtype == torch.uint8
    assert raw.train_y.tolist() == [0, 0, 0, 1, 1, 2, 2] and raw.test_y.tolist() == [0, 1]
    assert raw.train_y.dtype == torch.int64
    assert raw.train_x[0, :, 3, 3].tolist() == list(COLOURS["cat"])
    assert raw.test_x[1, :, 0, 0].tolist() == list(COLOURS["dog"])


def test_image_folder_class_layout_split_resize_and_grey(tmp_path):
    write_image_folder(tmp_path, {"cat": 10, "dog": 10}, size=20, ext="jpg")
    config = make_config("image_folder", path=str(tmp_path), image_size=8, options={"mode": "L"})
    raw = load_image_folder(config)
    assert raw.class_names == ["cat", "dog"]
    assert raw.train_x.shape == (16, 1, 8, 8) and raw.test_x.shape == (4, 1, 8, 8)
    assert sorted(raw.test_y.tolist()) == [0, 0, 1, 1]  # stratified 20%
    again = load_image_folder(config)
    assert again.extras["test_files"] == raw.extras["test_files"]  # seeded
    assert raw.train_x.shape == load_raw(config).train_x.shape


def test_image_folder_unreadable_image_names_file(tmp_path):
    write_image_folder(tmp_path, {"cat": 2, "dog": 2})
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(make_config("image_folder", path=str(tmp_path)))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(make_config("image_folder", path=str(tmp_path / "missing")))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="No images found"):
        load_image_folder(make_config("image_folder", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="data.options.mode"):
        load_image_folder(make_config("image_folder", path=str(tmp_path / "empty"), options={"mode": "CMYK"}))


# --------------------------------------------------------------------------- real data
def real_data_root() -> Path:
    """$PEERLEARN_DATA, else the repository's sibling folder shared/data."""
    env = os.environ.get("PEERLEARN_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def test_real_fashion_mnist_verifies_and_loads():
    root = real_data_root()
    if not (root / "fashion-mnist").is_dir():
        pytest.skip(f"real Fashion-MNIST not found under {root} (set PEERLEARN_DATA to the folder holding fashion-mnist/)")
    config = DataConfig(source="fashion_mnist", root=str(root), download=False)
    assert all(status == "ok" for _, status in verify_source("fashion_mnist", config))
    raw = load_fashion_mnist(config)  # verifies the official MD5s on the way
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert torch.bincount(raw.train_y).tolist() == [6000] * 10
    assert torch.bincount(raw.test_y).tolist() == [1000] * 10
    assert raw.class_names == FASHION_MNIST_CLASSES
    if (root / "mnist").is_dir():
        assert all(status == "ok" for _, status in verify_source("mnist", DataConfig(source="mnist", root=str(root))))


def test_md5_cache_sees_changes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a")
    first = md5_of(path)
    path.write_bytes(b"bb")
    assert md5_of(path) != first
    assert data_files.md5_of(path) == hashlib.md5(b"bb").hexdigest()


def test_image_folder_threaded_decoding_matches_serial(tmp_path):
    write_image_folder(tmp_path, {"cat": 40, "dog": 35}, size=4, ext="gif")
    threaded = load_image_folder(make_config("image_folder", path=str(tmp_path), options={"workers": 4, "size": 4}))
    serial = load_image_folder(make_config("image_folder", path=str(tmp_path), options={"workers": 1, "size": 4}))
    assert threaded.train_x.shape == (60, 3, 4, 4) and torch.equal(threaded.train_x, serial.train_x)
    assert torch.equal(threaded.test_y, serial.test_y)
