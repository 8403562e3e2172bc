"""Data given from Python: ``peerlearn.UserData`` (the user's Datasets or tensors).

    data = peerlearn.UserData(train=train_ds, val=val_ds, test=test_ds, class_names=names,
                              transform=random_erase)
    peerlearn.train(config, members={"a": net_a, "b": net_b}, data=data)

Each part is a map-style ``torch.utils.data.Dataset`` whose items are ``(input, label)`` (input: a
tensor, numpy array or PIL image; uint8 images are scaled to 0..1 like the built-in sources, float
inputs are taken as they are), a ``TensorDataset``, or a pair of tensors ``(x, y)``.

* Tensors stay in memory (the fast path). A Dataset is streamed through a DataLoader with
  ``data.stream_workers`` worker processes (``data.stream``: auto or true); ``data.stream: false``
  reads it into memory once.
* Labels of a Dataset come from its ``targets`` attribute when it has one (as torchvision's), else
  from one pass over it.
* Without ``val`` the validation split is held out of ``train`` as for every source
  (``data.val_fraction``, stratified, seeded); without ``test`` there is no test split.
* ``transform(x) -> x`` is applied to each training batch on the training device, after the built-in
  ``data.augment`` and before normalisation; its random draws should come from torch's global
  generator, which checkpoints save (so a resumed run draws the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from peerlearn.data.augment import BatchAugment
from peerlearn.data.lazy import LazyItems, as_tensor
from peerlearn.data.raw import RawDataset
from peerlearn.data.streaming import stream_workers, wants_stream
from peerlearn.errors import DataError

PYTHON_SOURCE = "python"
Part = Union[Dataset, tuple, list, None]


@dataclass
class UserData:
    """A user's training data (and optionally validation and test data) for ``peerlearn.train``."""

    train: Part
    val: Part = None
    test: Part = None
    num_classes: Optional[int] = None
    class_names: Optional[Sequence[str]] = None
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def to_raw(self, config) -> RawDataset:
        """The parts as a ``RawDataset`` (streamed parts as ``LazyItems``), checked; ``config`` is ``data:``."""
        if self.train is None:
            raise DataError("UserData needs train data (a Dataset or a pair of tensors (x, y)).")
        train_x, train_y = read_part(self.train, "train", config)
        val = read_part(self.val, "val", config) if self.val is not None else None
        test_x, test_y = read_part(self.test, "test", config) if self.test is not None else (train_x[:0], train_y[:0])
        for name, x in (("val", val[0] if val is not None else None), ("test", test_x)):
            if x is not None and len(x) and tuple(x.shape[1:]) != tuple(train_x.shape[1:]):
                raise DataError(f"UserData: the {name} inputs have shape {tuple(x.shape[1:])}, but the train inputs "
                                f"{tuple(train_x.shape[1:])}.")
        class_names = self.resolved_class_names(train_y)
        labels = [("train", train_y), ("test", test_y)] + ([("val", val[1])] if val is not None else [])
        for name, y in labels:
            check_labels(y, len(class_names), name)
        extras = {"val": val} if val is not None else {}
        return RawDataset(train_x, train_y, test_x, test_y, class_names=class_names, extras=extras)

    def resolved_class_names(self, train_y: torch.Tensor) -> list[str]:
        if self.class_names is not None:
            names = [str(n) for n in self.class_names]
            if self.num_classes is not None and self.num_classes != len(names):
                raise DataError(f"UserData: num_classes is {self.num_classes} but class_names has {len(names)} names.")
            return names
        count = self.num_classes if self.num_classes is not None else int(train_y.max()) + 1 if len(train_y) else 0
        if count < 1:
            raise DataError("UserData: give num_classes (or class_names); the train labels are empty.")
        return [str(i) for i in range(count)]


def check_labels(y: torch.Tensor, num_classes: int, part: str) -> None:
    """Labels must be integers in 0..num_classes-1 (or -1: unlabelled)."""
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"UserData: the {part} labels are {y.dtype}; give integer class indices.")
    bad = (y < -1) | (y >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise DataError(f"UserData: {part} item {first} has the label {int(y[first])}, outside 0..{num_classes - 1} "
                        "(-1 marks an unlabelled item); set num_classes or class_names.")


def read_part(part: Part, name: str, config) -> tuple[Any, torch.Tensor]:
    """(inputs, int64 labels) of one part: tensors in memory, or a streamed ``LazyItems`` for a Dataset."""
    if isinstance(part, (tuple, list)):
        if len(part) != 2:
            raise DataError(f"UserData: {name} is a sequence of {len(part)} things; give (x, y) or a Dataset.")
        x, y = (as_tensor(v, f"UserData {name}") for v in part)
        return _pair(x, y, name)
    if isinstance(part, TensorDataset) and len(part.tensors) == 2:
        return _pair(*part.tensors, name)
    if not isinstance(part, Dataset) or not hasattr(part, "__len__"):
        raise DataError(f"UserData: {name} is a {type(part).__name__}; give a map-style torch.utils.data.Dataset "
                        "(with __len__ and __getitem__) or a pair of tensors (x, y).")
    if len(part) == 0:
        raise DataError(f"UserData: the {name} Dataset is empty.")
    items = LazyItems(part, workers=stream_workers(config))
    labels = dataset_labels(part, items.workers, name)
    if not wants_stream(config, 0, user_dataset=True):
        return items.materialize(), labels
    return items, labels


def _pair(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(x) != len(y):
        raise DataError(f"UserData: {name} has {len(x)} inputs but {len(y)} labels.")
    if y.dim() != 1:
        raise DataError(f"UserData: the {name} labels have shape {tuple(y.shape)}; give one class index per item.")
    return x, y.long() if not (y.dtype.is_floating_point or y.dtype == torch.bool) else y


def dataset_labels(dataset: Dataset, workers: int, name: str) -> torch.Tensor:
    """Every item's label: ``dataset.targets`` when present, else one pass over the items."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        labels = torch.as_tensor(targets)
    else:
        loader = DataLoader(_Labels(dataset), batch_size=256, num_workers=workers,
                            generator=torch.Generator().manual_seed(0))
        labels = torch.cat([batch for batch in loader]) if len(dataset) else torch.zeros(0)
    if labels.dim() != 1:
        raise DataError(f"UserData: the {name} labels have shape {tuple(labels.shape)}; give one class index per item.")
    return labels.long() if not (labels.dtype.is_floating_point or labels.dtype == torch.bool) else labels


class _Labels(Dataset):
    """Item i -> its label (the input is read and dropped)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"UserData: item {index} of a Dataset is not (input, label).")
        return torch.as_tensor(item[1])


class WithBatchTransform:
    """The built-in batched augmentation, then the user's batch transform (training batches only)."""

    def __init__(self, augment: Optional[BatchAugment], transform: Callable[[torch.Tensor], torch.Tensor]):
        self.augment = augment
        self.transform = transform

    active = True

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment is not None and self.augment.active:
            images = self.augment(images, generator)
        return self.transform(images)


def load_python_source(config) -> RawDataset:
    """The loader of the ``python`` source: a run whose data came from Python cannot reload it from a config."""
    raise DataError("This run was trained on data given from Python (peerlearn.UserData); a config cannot load it. "
                    "Call peerlearn.train(..., data=peerlearn.UserData(...)) again (also to resume the run), or "
                    "point data.source at a built-in source (e.g. image_folder with data.path).")
