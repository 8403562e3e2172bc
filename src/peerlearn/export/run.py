"""`peerlearn export`: one member of a finished run, written for inference and checked against PyTorch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from peerlearn.export import formats
from peerlearn.export.check import TOLERANCE, ExportError, check_outputs
from peerlearn.export.preprocessing import export_info
from peerlearn.export.raw_input import LAYOUTS, RawImageModel, describe_raw_input, raw_check_batch
from peerlearn.progress import Mode, progress_bar


class ExportUsageError(ExportError):
    """A wrong member, format or option."""

    exit_code = 2


@dataclass
class ExportResult:
    member: str
    format: str
    model_path: Path
    info_path: Path
    max_abs_diff: float
    tolerance: float
    check_items: int
    check_split: str
    info: dict[str, Any]


def check_batch(run, items: int) -> tuple[torch.Tensor, str]:
    """The first ``items`` items of the test split (else val, else train), preprocessed as in training."""
    for split in ("test", "val", "train"):
        data_split = run.split(split, items)
        if len(data_split):
            return run.normalizer(data_split.x.to(run.device)).float().cpu().contiguous(), split
    raise ExportError("The run's dataset has no items to check the export on.")


def load_exported_safetensors(info_path: str | Path) -> torch.nn.Module:
    """An exported member rebuilt from its JSON (the recorded network) and .safetensors file, in eval mode."""
    from safetensors.torch import load_file

    from peerlearn.run_reader import build_network

    info_path = Path(info_path)
    info = json.loads(info_path.read_text())
    if "network" not in info:  # written before runs recorded their networks
        return formats.load_safetensors_model(info_path)
    model = build_network(info["network"])
    model.load_state_dict(load_file(str(info_path.parent / info["model_file"])), strict=True)
    return model.eval()


def run_exported_safetensors(info_path: Path, inputs: torch.Tensor):
    with torch.no_grad():
        return load_exported_safetensors(info_path)(inputs).cpu().numpy()


def choose_member(cohort, member: Optional[str]) -> str:
    if member is None:
        if len(cohort.evaluable) == 1:
            return cohort.evaluable[0]
        raise ExportUsageError(f"The run has {len(cohort)} members; choose one with --member "
                               f"({', '.join(cohort.names)}).")
    if member not in cohort.names:
        raise ExportUsageError(f"The run has no member {member!r}; it has: {', '.join(cohort.names)}.")
    return member


def export_member(run_dir: str | Path, member: Optional[str] = None, fmt: str = "onnx",
                  out: Optional[str | Path] = None, exporter: str = "auto", check_items: int = 64,
                  tolerance: float = TOLERANCE, progress: Mode = "auto",
                  raw_input: Optional[str] = None) -> ExportResult:
    """Write member ``member`` of the run in ``run_dir`` as ``fmt`` into ``out`` (default RUN_DIR/export),
    with ``<file>.json`` beside it; the written file is run again on ``check_items`` test items and its
    logits must match PyTorch's to max |Δ| < ``tolerance``, else the file is removed and ExportError raised.

    ``raw_input`` ("nchw" or "nhwc", images only, onnx and torchscript): the exported model takes the source's
    uint8 images and does the training pipeline's resize and normalisation itself (``RawImageModel``); the
    check compares it on raw test images with PyTorch on the same images preprocessed by the training code.
    """
    from peerlearn.api import load_run

    if fmt not in formats.FORMATS:
        raise ExportUsageError(f"Unknown export format {fmt!r}; allowed: {', '.join(formats.FORMATS)}.")
    if exporter not in formats.EXPORTERS:
        raise ExportUsageError(f"Unknown ONNX exporter {exporter!r}; allowed: {', '.join(formats.EXPORTERS)}.")
    if check_items < 1:
        raise ExportUsageError(f"--check-items must be at least 1, got {check_items}.")
    if raw_input is not None and raw_input not in LAYOUTS:
        raise ExportUsageError(f"Unknown raw input layout {raw_input!r}; allowed: {', '.join(LAYOUTS)}.")
    if raw_input is not None and fmt == "safetensors":
        raise ExportUsageError("--raw-input puts the preprocessing into a graph: use --format onnx or torchscript "
                               "(safetensors holds the weights only).")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device="cpu", command="export")
    name = choose_member(run.cohort, member)
    participant = run.cohort[name]
    if participant.predictor is None:
        raise ExportUsageError(f"{name!r} gives no logits of its own (an auxiliary module without predictions, or a "
                               f"multi-branch network whose branches are the run's members); export a member or a "
                               f"predicting module ({', '.join(run.cohort.evaluable)}).")
    if participant.kind == "auxiliary" and fmt == "safetensors":
        raise ExportUsageError(f"{name!r} is an auxiliary module whose predictions combine several of the run's "
                               "modules; export it as onnx or torchscript (one self-contained graph).")
    model = participant.predictor.eval().cpu()
    if raw_input is not None:
        if not run.data.is_image:
            raise ExportUsageError("--raw-input is for image data; this run's inputs are feature vectors.")
        inputs, resized, split = raw_check_batch(run.config, check_items, raw_input)
        with torch.no_grad():
            reference = model(run.normalizer(resized).float()).cpu().numpy()
        model = RawImageModel(model, run.data.mean, run.data.std, run.config.data.image_size, raw_input).eval()
    else:
        inputs, split = check_batch(run, check_items)
        with torch.no_grad():
            reference = model(inputs).cpu().numpy()

    target = Path(out) if out is not None else run_dir / "export"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportUsageError(f"Cannot create the output folder {str(target)!r}: {error.strerror}.") from None
    model_path = target / f"{name}{formats.SUFFIX[fmt]}"
    info_path = target / f"{model_path.name}.json"
    network = run.cohort[name].info["network"]
    info = export_info(run.data, name, network.get("model", network["kind"]), network.get("model_args", {}), fmt,
                       model_path.name, str(run_dir))
    info["network"] = network  # how peerlearn.run_reader.build_network rebuilds it (safetensors)
    if raw_input is not None:
        info["input"] = describe_raw_input(inputs, raw_input)
        info["preprocessing"]["in_graph"] = True
    example = inputs[: max(2, min(len(inputs), 8))]
    if len(example) < 2:  # a dynamic batch axis needs an example batch larger than one
        example = example.repeat(2, *[1] * (example.dim() - 1))

    bar = progress_bar(total=2, desc=f"export {name} ({fmt})", mode=progress)
    try:
        if fmt == "onnx":
            info["onnx"] = formats.save_onnx(model, example, model_path, exporter)
        elif fmt == "torchscript":
            formats.save_torchscript(model, example, model_path)
        else:
            formats.save_safetensors(model, model_path, {"member": name, "network": json.dumps(network)})
        bar.update(1)
        info_path.write_text(json.dumps(info, indent=2))  # the safetensors reload reads it
        if fmt == "onnx":
            candidate, runtime = formats.run_onnx(model_path, inputs), "onnxruntime"
        elif fmt == "torchscript":
            candidate, runtime = formats.run_torchscript(model_path, inputs), "torch.jit.load"
        else:
            candidate, runtime = run_exported_safetensors(info_path, inputs), "peerlearn.run_reader + safetensors"
        diff = check_outputs(reference, candidate, tolerance, what=f"{fmt} export of member {name!r}")
        bar.update(1)
    except BaseException:
        model_path.unlink(missing_ok=True)
        formats.external_data_path(model_path).unlink(missing_ok=True)
        info_path.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    info["check"] = {"split": split, "items": len(inputs), "max_abs_diff": diff, "tolerance": tolerance,
                     "runtime": runtime}
    info["files"] = [p.name for p in (model_path, formats.external_data_path(model_path), info_path) if p.exists()]
    info_path.write_text(json.dumps(info, indent=2))
    return ExportResult(name, fmt, model_path, info_path, diff, tolerance, len(inputs), split, info)
