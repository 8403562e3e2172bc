"""What a run's input pipeline does to one raw input, recorded in run.json and applied again to new inputs.

Training stores every input in a fixed form before the per-batch normalisation x = (v − mean) / std:

* images: uint8 pixels [C, H, W] (built-in sources, image folders) or the floats a user gave from Python.
  Image files are decoded with Pillow in the run's mode (``L``: 1 channel, ``RGB``: 3) and, for the sources
  that decode files (``image_folder``, ``market1501``), resized by Pillow to H x W (``resize: pillow``);
  with ``data.image_size`` on a source of tensors, the stored images were resized by
  ``peerlearn.data.prepare.resize_images`` (bilinear, half-pixel centres, rounded for uint8:
  ``resize: interpolate``). Without a resize, an input must already be H x W.
* features: float32 [F], the columns ``feature_names`` of a table, in that order.

``InputPipeline`` holds that description (``to_record`` / ``from_record``; a run recorded before it existed is
described from its data config) and turns a new input (a tensor, numpy array, PIL image, image file or the rows
of a table) into the stored form, or raises ``DataError`` naming the input and what is wrong. uint8 pixels are
divided by 255 at normalisation; float images are taken as given, so pixels (a PIL image, a file, a uint8
tensor) fit a run trained on float images only when those lay in 0..1 (the recorded range), where they are
given as pixel / 255.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from peerlearn.errors import DataError

FILE_SOURCES = ("image_folder", "market1501")  # sources that decode (and resize) image files with Pillow
MODES = {1: "L", 3: "RGB"}
UNIT_RANGE_SLACK = 1e-6


@dataclass
class InputPipeline:
    """The stored form of one input and how a raw input becomes it (see the module docstring)."""

    kind: str  # "image" or "features"
    shape: tuple[int, ...]  # [C, H, W] or the feature shape
    dtype: str = "uint8"  # the stored dtype: uint8 pixels or float32 values
    value_range: Optional[tuple[float, float]] = None  # min and max of the raw training inputs
    mode: Optional[str] = None  # Pillow mode of decoded images (L, RGB); None: channels other than 1 or 3
    resize: Optional[str] = None  # None, "pillow" or "interpolate"
    feature_names: Optional[list[str]] = None
    label_column: Optional[str] = None

    # ------------------------------------------------------------------ description
    @classmethod
    def of_run(cls, data_config: Any, data: Any) -> "InputPipeline":
        """The pipeline of a run on ``data`` (a ``DataBundle``) loaded with ``data_config``."""
        shape = tuple(int(d) for d in data.input_shape)
        dtype = "uint8" if data.train.x.dtype == torch.uint8 else "float32"
        value_range = tuple(data.value_range) if data.value_range is not None else None
        if not data.is_image:
            options = getattr(data_config, "options", None) or {}
            return cls("features", shape, "float32", value_range, feature_names=data.feature_names,
                       label_column=options.get("label") if data_config.source == "tabular" else None)
        return cls("image", shape, dtype, value_range, _mode(data_config, shape[0]), _resize(data_config))

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> "InputPipeline":
        """From run.json's ``data`` entry (older records: derived from the recorded data config)."""
        layout, config = recorded["input"], recorded.get("config", {})
        steps = recorded.get("preprocessing")
        if layout["kind"] == "image":
            shape = (layout["channels"], layout["height"], layout["width"])
            if steps is None:  # recorded before the pipeline was: built-in sources store uint8 images
                steps = {"mode": _mode(config, shape[0]), "resize": _resize(config)}
            return cls("image", shape, layout.get("dtype", "uint8"), _pair(layout.get("value_range")),
                       steps.get("mode"), steps.get("resize"))
        options = config.get("options") or {}
        names = recorded.get("feature_names") or options.get("features")
        label = recorded.get("label_column") or (options.get("label") if config.get("source") == "tabular" else None)
        return cls("features", tuple(layout.get("shape", [layout["features"]])), "float32",
                   _pair(layout.get("value_range")), feature_names=list(names) if names else None,
                   label_column=label)

    def to_record(self) -> dict[str, Any]:
        """The entries ``data_pipeline`` adds to run.json's ``data`` (``input`` fields and ``preprocessing``)."""
        entries: dict[str, Any] = {"input": {"dtype": self.dtype,
                                             "value_range": list(self.value_range) if self.value_range else None}}
        if self.kind == "image":
            entries["preprocessing"] = {"mode": self.mode, "resize": self.resize}
        else:
            entries["feature_names"] = self.feature_names
            entries["label_column"] = self.label_column
        return entries

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def unit_pixels(self) -> bool:
        """Whether pixels (0..255) can feed this run: it stored uint8, or floats within 0..1 (as pixel / 255)."""
        if self.dtype == "uint8":
            return True
        low, high = self.value_range or (None, None)
        return low is not None and low >= -UNIT_RANGE_SLACK and high <= 1 + UNIT_RANGE_SLACK

    # ------------------------------------------------------------------ raw inputs -> stored form
    def image_file(self, path: Path) -> torch.Tensor:
        """An image file decoded (and resized) as the run's pipeline does it."""
        from peerlearn.data.image_folder import read_image

        mode = self._require_mode(str(path))
        if self.resize == "pillow":
            pixels = read_image(path, mode, tuple(self.shape[1:]))
        else:
            pixels = read_image(path, mode, _native_size(path))
        return self.pixels(torch.from_numpy(np.array(pixels, copy=True)), str(path))

    def pil_image(self, image: Any, where: str) -> torch.Tensor:
        """A PIL image, converted to the run's mode and resized as its pipeline does it."""
        mode = self._require_mode(where)
        image = image.convert(mode)
        height, width = self.shape[1:]
        if self.resize == "pillow" and image.size != (width, height):
            from peerlearn.data.image_folder import _pillow

            image = image.resize((width, height), _pillow().BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return self.pixels(torch.from_numpy(np.array(array, copy=True)), where)

    def pixels(self, pixels: torch.Tensor, where: str) -> torch.Tensor:
        """uint8 pixels [C, H, W] -> the stored form (resized when the run resizes; floats for a float run)."""
        if not self.unit_pixels:
            low, high = self.value_range or (float("nan"), float("nan"))
            raise DataError(f"{where}: this run was trained on float images with values in {low:.3g}..{high:.3g}, "
                            "not pixels; give float tensors preprocessed as its training inputs were.")
        pixels = self._sized(pixels, where)
        return pixels if self.dtype == "uint8" else pixels.float() / 255.0

    def tensor(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """One input as a tensor of the stored shape: images [C, H, W] (resized when the run resizes), features
        [F]. uint8 images are pixels; float images and features are taken as given."""
        if self.is_image:
            if x.dim() == 2 and self.shape[0] == 1:
                x = x[None]
            if x.dim() != 3:
                raise DataError(f"{where} has shape {tuple(x.shape)}; this run takes images [{self.shape[0]}, H, W].")
            if x.dtype == torch.uint8:
                return self.pixels(x, where)
            if not x.dtype.is_floating_point:
                raise DataError(f"{where} is a tensor of {x.dtype}; give uint8 pixels or float values.")
            return self._sized(x.float(), where)
        if tuple(x.shape) != self.shape:
            if x.numel() == int(np.prod(self.shape)) and x.dim() == 1:
                x = x.reshape(self.shape)
            else:
                raise DataError(f"{where} has shape {tuple(x.shape)}; this run takes {_features(self.shape)}.")
        if x.dtype == torch.bool or not (x.dtype.is_floating_point or x.dtype in _INTEGERS):
            raise DataError(f"{where} is a tensor of {x.dtype}; give numbers.")
        return x.float()

    def table_features(self, table: Any) -> torch.Tensor:
        """The rows of a table (``peerlearn.data.tabular.Table``) as features [N, F] in the run's column order."""
        from peerlearn.data.tabular import feature_matrix

        if not self.feature_names:
            raise DataError("This run does not record its feature columns (it was trained on tensors, or by an "
                            "older peerlearn); give the features as a tensor or numpy array instead of a table.")
        return feature_matrix(table, self.feature_names)

    def _require_mode(self, where: str) -> str:
        if self.kind != "image":
            raise DataError(f"{where} is an image, but this run takes {_features(self.shape)}.")
        if self.mode is None:
            raise DataError(f"{where}: this run's images have {self.shape[0]} channels, which no image file "
                            "mode gives; give tensors instead.")
        return self.mode

    def _sized(self, x: torch.Tensor, where: str) -> torch.Tensor:
        """Check the channels, and resize (as the run did) or check the size."""
        channels, height, width = self.shape
        if x.shape[0] != channels:
            raise DataError(f"{where} has {x.shape[0]} channel(s); this run takes {channels}.")
        if tuple(x.shape[1:]) == (height, width):
            return x
        if self.resize == "interpolate" and height == width:
            from peerlearn.data.prepare import resize_images

            return resize_images(x[None], height)[0]
        if self.resize == "pillow" and x.dtype == torch.uint8:
            from peerlearn.data.image_folder import _pillow

            Image = _pillow()
            array = x.permute(1, 2, 0).numpy()
            image = Image.fromarray(array[..., 0] if channels == 1 else array, self.mode)
            return self.pil_image(image.resize((width, height), Image.BILINEAR), where)
        raise DataError(f"{where} is {x.shape[1]}x{x.shape[2]} pixels; this run takes {height}x{width} (its "
                        "training did not resize images, so neither does prediction).")


_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _features(shape: tuple[int, ...]) -> str:
    return f"feature vectors of {int(np.prod(shape))} values"


def _pair(value) -> Optional[tuple[float, float]]:
    return (float(value[0]), float(value[1])) if value else None


def _get(config: Any, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _mode(config: Any, channels: int) -> Optional[str]:
    """The Pillow mode of the run's images: the source's ``mode`` option, else the one of its channel count."""
    options = _get(config, "options") or {}
    if _get(config, "source") in FILE_SOURCES and options.get("mode"):
        return str(options["mode"])
    return MODES.get(channels)


def _resize(config: Any) -> Optional[str]:
    if _get(config, "source") in FILE_SOURCES:
        return "pillow"
    return "interpolate" if _get(config, "image_size") else None


def _native_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (``DataError`` when it is not an image)."""
    from peerlearn.data.image_folder import _pillow

    try:
        with _pillow().open(path) as image:
            width, height = image.size
    except Exception as error:  # Pillow raises many kinds for a file that is not an image
        raise DataError(f"Cannot read the image {path}: {error}.") from None
    return height, width
