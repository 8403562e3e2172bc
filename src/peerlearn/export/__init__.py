"""Export a trained member for inference: ONNX, TorchScript or safetensors (`peerlearn export`)."""

from peerlearn.export.check import TOLERANCE, ExportError
from peerlearn.export.formats import load_safetensors_model
from peerlearn.export.run import ExportResult, export_member

__all__ = ["export_member", "ExportResult", "ExportError", "TOLERANCE", "load_safetensors_model"]
