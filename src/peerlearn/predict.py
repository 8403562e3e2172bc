"""Class probabilities of new inputs from a run read back (``run.predict``, ``peerlearn predict``).

Each input goes through the run's own preprocessing (``peerlearn.data.preprocess.InputPipeline``, recorded in
run.json): an image file or PIL image is decoded in the run's mode and resized as training resized it, a tensor
or numpy array is checked against the stored shape, the rows of a table give the run's feature columns; then
x = (v − mean) / std with the recorded statistics. The probabilities of members m_1..m_K are

    p(x) = 1/K · Σ_k softmax(z_k(x))

over the run's ensemble (its students, as in training's final evaluation) by default, or over one member
(``member``, any member of the run: a student, a teacher, a frozen member). Inputs are read and scored in
batches of ``batch_size``, without gradients (``torch.inference_mode``), on the run's device or ``device``.
A wrong input (size, channels, columns, a file that is not an image) is a ``DataError`` (exit 2) naming it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from peerlearn.data.batches import Normalizer
from peerlearn.data.lazy import input_of
from peerlearn.data.preprocess import InputPipeline
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.errors import ConfigError, DataError
from peerlearn.progress import Mode, progress_bar

DEFAULT_BATCH_SIZE = 256
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


@dataclass
class Predictions:
    """Probabilities [N, C] of named inputs (file paths, table rows or item positions)."""

    names: list[str]
    probabilities: torch.Tensor
    class_names: list[str]
    predicted_by: str  # a member's name, or "ensemble of a, b"

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[i] for i in self.probabilities.argmax(1).tolist()]


def predicting_members(run, member: Optional[str] = None) -> list[str]:
    """``[member]`` (checked), else the run's ensemble, else (no student) its first member."""
    if member is not None:
        return run.select([member])
    return run.ensemble or run.cohort.names[:1]


def describe_members(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{ENSEMBLE} of {', '.join(names)}"


# --------------------------------------------------------------------------- inputs -> stored batches
def _is_path(item: Any) -> bool:
    return isinstance(item, (str, Path))


def _is_pil(item: Any) -> bool:
    return hasattr(item, "convert") and hasattr(item, "size") and not isinstance(item, (torch.Tensor, np.ndarray))


def stored_item(pipeline: InputPipeline, item: Any, where: str) -> torch.Tensor:
    """One input (a tensor, numpy array, PIL image or image file path) in the run's stored form."""
    if _is_path(item):
        return pipeline.image_file(Path(item))
    if _is_pil(item):
        return pipeline.pil_image(item, where)
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return pipeline.tensor(input_of(item, where), where)
    raise DataError(f"{where} is a {type(item).__name__}; give tensors, numpy arrays, PIL images or image files.")


def _tensor_batches(pipeline: InputPipeline, x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """A batch tensor [N, ...] cut into batches; items of the stored shape and a fitting dtype pass as a block."""
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        fits = tuple(chunk.shape[1:]) == pipeline.shape
        if fits and pipeline.is_image and chunk.dtype == torch.uint8 and pipeline.unit_pixels:
            yield chunk if pipeline.dtype == "uint8" else chunk.float() / 255.0
        elif fits and chunk.dtype.is_floating_point:
            yield chunk.float()
        else:
            yield torch.stack([pipeline.tensor(item, f"input {start + i}") for i, item in enumerate(chunk)])


def _is_single(pipeline: InputPipeline, x: torch.Tensor) -> bool:
    """Whether a tensor is one input rather than a batch of them."""
    if pipeline.is_image:
        return x.dim() == 3 or (x.dim() == 2 and pipeline.shape[0] == 1)
    return x.dim() == len(pipeline.shape)


def input_batches(pipeline: InputPipeline, inputs: Any, batch_size: int) -> tuple[list[str], Iterator[torch.Tensor]]:
    """The names of the inputs and their batches in the stored form (read lazily, batch by batch)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        x = input_of(inputs, "the inputs")
        x = x[None] if _is_single(pipeline, x) else x
        return [str(i) for i in range(len(x))], _tensor_batches(pipeline, x, batch_size)
    if _is_pil(inputs) or _is_path(inputs):
        inputs = [inputs]
    if isinstance(inputs, Dataset) and hasattr(inputs, "__len__"):
        items: Sequence[Any] = _DatasetInputs(inputs)
    elif isinstance(inputs, (list, tuple)):
        items = inputs
    else:
        raise DataError(f"The inputs are a {type(inputs).__name__}; give a tensor or numpy array (one input or a "
                        "batch), a PIL image, a list of them, image file paths or a torch Dataset.")
    names = [str(item) if _is_path(item) else str(i) for i, item in enumerate(items)]

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(items), batch_size):
            yield torch.stack([stored_item(pipeline, items[i], f"input {names[i]}")
                               for i in range(start, min(start + batch_size, len(items)))])

    return names, batches()


class _DatasetInputs:
    """The inputs of a Dataset's items (``(input, label)`` or a bare input), read on demand."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) and item else item


# --------------------------------------------------------------------------- scoring
@torch.inference_mode()
def probabilities(run, names: Sequence[str], batches: Iterable[torch.Tensor], device: torch.device,
                  total: Optional[int] = None, progress: Mode = "off") -> torch.Tensor:
    """Mean class probabilities of the members ``names`` on stored-form batches, [N, C] on the CPU."""
    mean, std = run.normalizer.mean.flatten().tolist(), run.normalizer.std.flatten().tolist()
    normalizer = Normalizer(mean, std, device, run.pipeline.is_image)
    models = []
    for name in names:
        model = run.cohort[name].predictor.to(device).eval()  # a member, a branch, or an auxiliary that predicts
        if getattr(model, "head_only", False):  # a transfer head trained on cached features: read the inputs
            model.head_only = False
        models.append(model)
    parts = []
    for x in progress_bar(batches, total=total, desc="predict", mode=progress, unit="batch"):
        x = normalizer(x.to(device))
        parts.append(torch.stack([F.softmax(model(x).float(), dim=1) for model in models]).mean(0).cpu())
    if not parts:
        return torch.zeros((0, len(run.class_names)))
    return torch.cat(parts)


def _device(run, device: Union[str, torch.device, None]) -> torch.device:
    """The run's device, or ``device`` when it exists here (``ConfigError`` otherwise)."""
    if device is None:
        return run.device
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"The device {str(device)!r} is not available here; use cpu.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"The device {str(device)!r} is not available here; use cpu.")
    return chosen


def _batch_size(batch_size: Optional[int]) -> int:
    size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if size < 1:
        raise ConfigError(f"The batch size must be at least 1, got {batch_size}.")
    return size


def predict(run, inputs: Any, member: Optional[str] = None, batch_size: Optional[int] = None,
            device: Union[str, torch.device, None] = None, progress: Mode = "off") -> torch.Tensor:
    """Class probabilities [N, C] (columns in ``run.class_names`` order) of ``inputs``: a tensor or numpy array
    (one input or a batch), a PIL image, an image file, a list of these, or a torch Dataset (of ``(input,
    label)`` items or bare inputs). The run's ensemble by default, member ``member`` when named."""
    names = predicting_members(run, member)
    size = _batch_size(batch_size)
    item_names, batches = input_batches(run.pipeline, inputs, size)
    return probabilities(run, names, batches, _device(run, device), -(-len(item_names) // size), progress)


# --------------------------------------------------------------------------- files and folders
def _is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES


def read_table(path: Path):
    """A CSV file (``.tsv``: tab-separated) as a ``peerlearn.data.tabular.Table``."""
    from peerlearn.data.tabular import read_csv

    try:
        return read_csv(str(path), "\t" if path.suffix.lower() == ".tsv" else ",", "INPUT")
    except ConfigError as error:
        raise DataError(str(error)) from None


def image_paths(path: Path) -> list[Path]:
    """An image file, or every image under a folder (recursively, sorted)."""
    from peerlearn.data.image_folder import image_files

    if path.is_dir():
        found = image_files(path)
        if not found:
            raise DataError(f"No images found under {path} (any depth); image files end in .png, .jpg, .jpeg, "
                            ".bmp, .gif or .webp.")
        return found
    return [path]


def predict_path(run, path: Union[str, Path], member: Optional[str] = None, batch_size: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, progress: Mode = "auto") -> Predictions:
    """Predictions of the inputs at ``path``: an image file or a folder of images (image runs), a CSV file
    (tabular runs: the run's feature columns; rows named by number, the first data row 1)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"The input {str(path)!r} does not exist.")
    pipeline = run.pipeline
    names = predicting_members(run, member)
    size = _batch_size(batch_size)
    if pipeline.is_image:
        if _is_table(path):
            raise DataError(f"The input {str(path)!r} is a table, but this run takes images: give an image file or "
                            "a folder of images.")
        files = image_paths(path)
        item_names = [str(f) for f in files]
        batches = (torch.stack([pipeline.image_file(f) for f in files[i:i + size]]) for i in range(0, len(files), size))
    else:
        if not _is_table(path):
            raise DataError(f"The input {str(path)!r} is not a CSV file ({', '.join(TABLE_SUFFIXES)}); this run "
                            "takes rows of feature columns: " + ", ".join(pipeline.feature_names or []) + ".")
        features = pipeline.table_features(read_table(path))
        item_names = [f"row {i}" for i in range(1, len(features) + 1)]
        batches = (features[i:i + size] for i in range(0, len(features), size))
    result = probabilities(run, names, batches, _device(run, device), -(-len(item_names) // size), progress)
    return Predictions(item_names, result, run.class_names, describe_members(names))


def predictions_csv(predictions: Predictions, every_class: bool = False) -> str:
    """CSV text: input, predicted class, its probability (and with ``every_class`` one column per class)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["input", "predicted", "probability"]
    if every_class:
        header += [f"p_{name}" for name in predictions.class_names]
    writer.writerow(header)
    best, index = predictions.probabilities.max(1)
    for n, name in enumerate(predictions.names):
        row = [name, predictions.class_names[int(index[n])], f"{float(best[n]):.6g}"]
        if every_class:
            row += [f"{float(p):.6g}" for p in predictions.probabilities[n]]
        writer.writerow(row)
    return buffer.getvalue()


# --------------------------------------------------------------------------- labelled inputs (evaluate --data)
def labelled_inputs(run, data: Any, label_column: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Inputs in the stored form, their class indices in the run's class order, and a description, of labelled
    data that is not the run's own: a folder of images with one subfolder per class (named as the run's
    classes), a CSV file with the run's feature columns and a label column (``label_column``, default the one
    the run was trained with), a pair ``(x, y)`` or a torch Dataset of ``(input, label)`` items."""
    pipeline, classes = run.pipeline, run.class_names
    if _is_path(data):
        path = Path(data)
        if not path.exists():
            raise DataError(f"The labelled data {str(path)!r} (evaluate --data, or data= from Python) does not exist.")
        if pipeline.is_image:
            return _image_folder(pipeline, path, classes) + (str(path),)
        return _labelled_table(pipeline, path, classes, label_column) + (str(path),)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        labels = input_of(y, "the labels").long().flatten()
        where = "the given tensors"
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        from peerlearn.data.user import dataset_labels

        x, labels, where = data, dataset_labels(data, 0, "evaluation"), f"the {type(data).__name__} dataset"
    else:
        raise DataError(f"The evaluation data is a {type(data).__name__}; give a folder or CSV file path, a pair "
                        "(x, y) or a torch Dataset of (input, label) items.")
    _, batches = input_batches(pipeline, x, DEFAULT_BATCH_SIZE)
    inputs = torch.cat(list(batches))
    if len(inputs) != len(labels):
        raise DataError(f"The evaluation data has {len(inputs)} inputs but {len(labels)} labels.")
    bad = (labels < 0) | (labels >= len(classes))
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise DataError(f"Item {first} of the evaluation data has the label {int(labels[first])}, outside the run's "
                        f"classes 0..{len(classes) - 1}.")
    return inputs, labels, where


def _image_folder(pipeline: InputPipeline, folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``folder/<class>/...`` images (any depth below the class folder); class folders named as the run's."""
    from peerlearn.data.image_folder import class_folders, image_files

    if not folder.is_dir():
        raise DataError(f"The data {str(folder)!r} is not a folder; an image run is scored on a folder with one "
                        "subfolder per class.")
    index = {name: i for i, name in enumerate(classes)}
    folders = class_folders(folder)
    unknown = [p.name for p in folders if p.name not in index]
    if unknown or not folders:
        raise DataError(f"The folder {str(folder)!r} has class folders that are not the run's classes: "
                        f"{', '.join(unknown[:5]) or 'none at all'}; the run's classes: {', '.join(classes)}.")
    files, labels = [], []
    for sub in folders:
        found = image_files(sub)
        files += found
        labels += [index[sub.name]] * len(found)
    if not files:
        raise DataError(f"No images found in the class folders of {str(folder)!r}.")
    return torch.stack([pipeline.image_file(f) for f in files]), torch.tensor(labels, dtype=torch.int64)


def _labelled_table(pipeline: InputPipeline, path: Path, classes: list[str],
                    label_column: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from peerlearn.data.tabular import encode_labels, label_text

    if not _is_table(path):
        raise DataError(f"The data {str(path)!r} is not a CSV file; a tabular run is scored on rows with its "
                        "feature columns and a label column.")
    table = read_table(path)
    label = label_column or pipeline.label_column
    if not label or label not in table.columns:
        raise DataError(f"The {table.origin} has no label column {label!r}; its columns: {', '.join(table.columns)} "
                        "(name the label column with --label).")
    column = table.columns.index(label)
    labels = encode_labels([label_text(row[column]) for row in table.rows], classes, table.origin)
    return pipeline.table_features(table), labels
