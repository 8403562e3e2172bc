"""Writing a model in each export format, and running the written file again for the check.

* ``onnx``: ``torch.onnx.export`` with a dynamic batch axis, input ``input`` [N, ...] float32 (uint8 for a
  raw-input export), output ``logits`` [N, classes], weights embedded in the one ``.onnx`` file when they fit
  (< 2 GiB); run back with onnxruntime on the CPU.
* ``torchscript``: ``torch.jit.trace`` in eval mode, saved with ``torch.jit.save``; reloaded with ``torch.jit.load``.
* ``safetensors``: the state dict alone (no code, nothing unpickled); reloaded into a fresh model built by
  ``peerlearn.models.create_model`` from the architecture recorded in the JSON beside it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peerlearn.export.check import ExportError

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
EXPORTERS = ("auto", "dynamo", "legacy")


@contextmanager
def quiet_deprecations():
    """TorchScript and the legacy ONNX exporter warn that they are deprecated (the user chose them), and the
    dynamo exporter logs that torchvision's operators are skipped (peerlearn does not use torchvision)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            yield
    finally:
        registration.setLevel(level)


def missing_extra(package: str) -> ExportError:
    error = ExportError(f"Exporting to ONNX needs {package}, which is not installed: pip install 'peerlearn[export]'.")
    error.exit_code = 2
    return error


# --------------------------------------------------------------------------- writing
def save_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``model`` on ``example`` and write it to ``path``. The archive is built in memory and written
    with Python's own file API: on a full disk ``torch.jit.save(path)``'s writer aborts the whole process
    (a C++ error thrown while it closes), where a plain write raises ``OSError(ENOSPC)``."""
    with quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    Path(path).write_bytes(buffer.getbuffer())


def save_safetensors(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def choose_exporter(exporter: str) -> str:
    """``auto``: the torch.export-based exporter when onnxscript is installed, else the legacy one."""
    if exporter not in EXPORTERS:
        raise ExportError(f"Unknown ONNX exporter {exporter!r}; allowed: {', '.join(EXPORTERS)}.")
    if exporter == "auto":
        return "dynamo" if importlib.util.find_spec("onnxscript") is not None else "legacy"
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise missing_extra("onnxscript (for the dynamo exporter)")
    return exporter


def save_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str = "auto") -> dict[str, Any]:
    """Export to ONNX; ``auto`` falls back to the legacy exporter when the dynamo one fails.

    Returns what was used: ``{"exporter": ..., "opset": ..., "fallback_reason": ...}``.
    """
    if importlib.util.find_spec("onnx") is None:
        raise missing_extra("onnx")
    chosen = choose_exporter(exporter)
    info: dict[str, Any] = {}
    try:
        _run_onnx_export(model, example, path, chosen)
    except ExportError:
        raise
    except Exception as error:  # the exporters raise many types
        if exporter != "auto" or chosen == "legacy":
            raise ExportError(f"torch.onnx.export ({chosen}) failed: {type(error).__name__}: {error}") from None
        info["fallback_reason"] = f"dynamo exporter failed ({type(error).__name__}: {str(error)[:200]})"
        chosen = "legacy"
        try:
            _run_onnx_export(model, example, path, chosen)
        except Exception as second:
            raise ExportError(f"torch.onnx.export failed with both exporters; legacy: {type(second).__name__}: "
                              f"{second}") from None
    import onnx

    info["exporter"] = chosen
    info["opset"] = next((o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")), None)
    return info


ONNX_SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GiB, less room for the graph itself


def external_data_path(path: Path) -> Path:
    """Where the ONNX exporter puts the weights when they do not fit in one file."""
    return path.with_name(path.name + ".data")


def weights_fit_in_one_file(model: torch.nn.Module) -> bool:
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return size < ONNX_SINGLE_FILE_LIMIT


def _run_onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """Write ``path`` with a dynamic batch axis; the weights are embedded in it when they fit in one file
    (< 2 GiB), else written beside it as ``NAME.onnx.data``."""
    common = dict(input_names=["input"], output_names=["logits"])
    external_data_path(path).unlink(missing_ok=True)
    with quiet_deprecations(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch")
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False,
                              dynamic_shapes=({0: batch},), external_data=not weights_fit_in_one_file(model),
                              **common)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)


# --------------------------------------------------------------------------- running back
def run_onnx(path: Path, inputs: torch.Tensor) -> np.ndarray:
    """Logits of the ONNX file on ``inputs``, computed by onnxruntime (CPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_extra("onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    array = inputs.cpu().numpy()
    return session.run(None, {name: array if array.dtype == np.uint8 else array.astype(np.float32)})[0]


def run_torchscript(path: Path, inputs: torch.Tensor) -> np.ndarray:
    with quiet_deprecations(), torch.no_grad():
        module = torch.jit.load(str(path), map_location="cpu")
        return module(inputs).cpu().numpy()


def load_safetensors_model(info_path: str | Path) -> torch.nn.Module:
    """Rebuild an exported member from its JSON (architecture) and .safetensors file (weights), in eval mode."""
    from safetensors.torch import load_file

    from peerlearn.models import create_model

    info_path = Path(info_path)
    info = json.loads(info_path.read_text())
    model = create_model(info["model"]["name"], **info["model"]["kwargs"], **info["model"]["args"])
    model.load_state_dict(load_file(str(info_path.parent / info["model_file"])), strict=True)
    return model.eval()


def run_safetensors(info_path: Path, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_safetensors_model(info_path)(inputs).cpu().numpy()
