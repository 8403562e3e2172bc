"""What a consumer of an exported model must know: the input layout, the preprocessing and the classes.

Images: x = (pixel / 255 − mean[c]) / std[c] per channel c, after resizing to the run's input size
(``RESIZE_METHOD``: bilinear with half-pixel centres, no antialiasing, rounded to uint8), as float32 NCHW. Features (tabular data): x = (value − mean[f]) / std[f].
"""

from __future__ import annotations

from typing import Any

from peerlearn import __version__
from peerlearn.data.bundle import DataBundle


RESIZE_METHOD = {
    "function": "torch.nn.functional.interpolate(x.float(), size=(height, width), mode='bilinear', "
                "align_corners=False), then round (half to even) and clamp to 0..255",
    "mode": "bilinear", "align_corners": False, "antialias": False, "coordinates": "half_pixel",
    "rounded_to_uint8": True,
    "when": "only when the source image is not already height x width",
    "note": "Pillow's resize(BILINEAR) antialiases when shrinking and gives other pixels; export with "
            "--raw-input to have this resize inside the model",
}


def describe_inputs(data: DataBundle) -> dict[str, Any]:
    """The ``input`` and ``preprocessing`` parts of the JSON written beside an exported model."""
    shape = list(data.input_shape)
    if data.is_image:
        channels, height, width = shape
        return {
            "input": {"name": "input", "shape": [None, *shape], "dtype": "float32", "layout": "NCHW",
                      "kind": "image", "channels": channels, "height": height, "width": width},
            "preprocessing": {
                "resize": [height, width],
                "resize_method": RESIZE_METHOD,
                "scale": 1 / 255,
                "mean": list(data.mean),
                "std": list(data.std),
                "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c], pixels 0..255 after resizing to "
                           "height x width as resize_method says",
                "in_graph": False,
            },
        }
    return {
        "input": {"name": "input", "shape": [None, *shape], "dtype": "float32", "layout": "NF",
                  "kind": "features", "features": data.in_features},
        "preprocessing": {"scale": 1.0, "mean": list(data.mean), "std": list(data.std),
                          "formula": "x[f] = (value[f] - mean[f]) / std[f]"},
    }


def export_info(data: DataBundle, member: str, model_name: str, model_args: dict, fmt: str, model_file: str,
                run_dir: str) -> dict[str, Any]:
    """The JSON saved beside an exported model (its ``check`` entry is added after the check)."""
    return {
        "peerlearn_version": __version__,
        "format": fmt,
        "model_file": model_file,
        "member": member,
        "run_dir": run_dir,
        "dataset": data.name,
        "model": {"name": model_name, "args": model_args, "kwargs": data.model_kwargs()},
        **describe_inputs(data),
        "output": {"name": "logits", "shape": [None, data.num_classes],
                   "note": "unnormalised scores; probabilities = softmax(logits)"},
        "class_names": list(data.class_names),
    }
