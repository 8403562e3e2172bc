"""The dataset sources peerlearn knows, each loaded lazily from ``module:function``.

A loader takes the ``DataConfig`` (it finds its files through ``peerlearn.data.files``) and
returns a ``RawDataset``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class SourceSpec:
    loader: str  # "module:function"
    description: str
    needs_path: bool = False  # the config's data.path names the folder/file
    files: tuple[str, ...] = ()  # official files checked by `peerlearn datasets verify`
    options: Optional[tuple[str, ...]] = None  # data.options keys it reads besides verify (None: not checked)
    gives: str = "images"  # "images", or "features" (vectors): which default network fits it (Recipe.defaults)

    def load_function(self) -> Callable:
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)


SOURCES: dict[str, SourceSpec] = {
    "digits": SourceSpec(
        "peerlearn.data.digits:load_digits",
        "scikit-learn's 1,797 8x8 handwritten digits (embedded, no file needed)",
        options=(),
    ),
    "mnist": SourceSpec(
        "peerlearn.data.idx:load_mnist",
        "MNIST, 60k/10k 28x28 digits (official IDX .gz files)",
        files=("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz",
               "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
        options=("verify",),
    ),
    "fashion_mnist": SourceSpec(
        "peerlearn.data.idx:load_fashion_mnist",
        "Fashion-MNIST, 60k/10k 28x28 clothing images (official IDX .gz files)",
        files=("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz",
               "fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
        options=("verify",),
    ),
    "cifar10": SourceSpec(
        "peerlearn.data.cifar:load_cifar10",
        "CIFAR-10, 50k/10k 32x32 colour images (official python pickle archive)",
        files=("cifar-10-python.tar.gz",),
        options=("verify",),
    ),
    "cifar100": SourceSpec(
        "peerlearn.data.cifar:load_cifar100",
        "CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes (official python pickle archive)",
        files=("cifar-100-python.tar.gz",),
        options=("verify", "labels"),
    ),
    "image_folder": SourceSpec(
        "peerlearn.data.image_folder:load_image_folder",
        "a folder with one subfolder per class (data.path; optional train/ and test/ subfolders)",
        needs_path=True,
        options=("mode", "size", "test_fraction", "split_seed", "workers", "cache", "cache_dir"),
    ),
    "market1501": SourceSpec(
        "peerlearn.data.market1501:load_market1501",
        "Market-1501 person re-id folder (data.path): identity classification + query/gallery retrieval",
        needs_path=True,
    ),
    "python": SourceSpec(
        "peerlearn.data.user:load_python_source",
        "data given from Python: peerlearn.train(..., data=peerlearn.UserData(...)) (not loadable from a config)",
        options=(),
    ),
    "tabular": SourceSpec(
        "peerlearn.data.tabular:load_tabular",
        "rows of a CSV file (data.path) or of a SQL query on a database (data.options.url + query); "
        "numeric feature columns and a label column named in data.options",
        gives="features",
    ),
}
