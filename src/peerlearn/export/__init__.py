"""Export a trained member for inference: ONNX, TorchScript or safetensors (`peerlearn export`)."""

from peerlearn.export.check import TOLERANCE, ExportError
from peerlearn.export.run import ExportResult, export_member
from peerlearn.export.run import load_exported_safetensors as load_safetensors_model

__all__ = ["export_member", "ExportResult", "ExportError", "TOLERANCE", "load_safetensors_model"]
