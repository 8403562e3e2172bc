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
from peerlearn.safe_write import check_writable, disk_error_in, ensure_folder, staged_files, write_failure
from peerlearn.run_files import EXPORT_DIR


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


def stored_random_inputs(run, items: int, native: bool = False) -> torch.Tensor:
    """``items`` seeded random inputs in the run's stored form (uint8 pixels, or values in the recorded range)."""
    pipeline = run.pipeline
    generator = torch.Generator().manual_seed(0)
    shape = (items, *pipeline.shape)
    if pipeline.is_image and (pipeline.dtype == "uint8" or native):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    low, high = pipeline.value_range or (-1.0, 1.0)
    return low + (high - low) * torch.rand(shape, generator=generator)


def check_batch(run, items: int) -> tuple[torch.Tensor, str]:
    """The first ``items`` items of the test split (else val, else train), preprocessed as in training; for a
    run whose data was given from Python (not stored with it), seeded random inputs ("random")."""
    if not run.has_data:
        return run.normalizer(stored_random_inputs(run, items).to(run.device)).float().cpu().contiguous(), "random"
    for split in ("test", "val", "train"):
        data_split = run.split(split, items)
        if len(data_split):
            return run.normalizer(data_split.x.to(run.device)).float().cpu().contiguous(), split
    raise ExportError("The run's dataset has no items to check the export on.")


def load_exported_safetensors(info_path: str | Path, trust_code: bool = False) -> torch.nn.Module:
    """An exported member rebuilt from its JSON (the recorded network) and .safetensors file, in eval mode.

    The JSON is read, not run: code it names (a ``package.module:callable`` model or factory) is imported only
    with ``trust_code=True`` (``peerlearn.trust``); zoo and timm models need no trust."""
    from safetensors.torch import load_file

    from peerlearn.run_reader import build_network, network_references
    from peerlearn.trust import reading, require_trusted_references, trusting_code

    info_path = Path(info_path)
    info = json.loads(info_path.read_text())
    with trusting_code(trust_code), reading(False, f"the exported model description {str(info_path)!r}"):
        if "network" not in info:  # written before runs recorded their networks
            model_name = info.get("model", {}).get("name") if isinstance(info.get("model"), dict) else None
            require_trusted_references([(model_name, "model.name")] if isinstance(model_name, str) else [])
            return formats.load_safetensors_model(info_path)
        require_trusted_references(network_references(info["network"], "network"))
        model = build_network(info["network"])
    model.load_state_dict(load_file(str(info_path.parent / info["model_file"])), strict=True)
    return model.eval()


def run_exported_safetensors(info_path: Path, inputs: torch.Tensor):
    """The check of a file this export just wrote from a run already read (and trusted, if it names code)."""
    with torch.no_grad():
        return load_exported_safetensors(info_path, trust_code=True)(inputs).cpu().numpy()


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
                  raw_input: Optional[str] = None, trust_code: bool = False) -> ExportResult:
    """Write member ``member`` of the run in ``run_dir`` as ``fmt`` into ``out`` (default RUN_DIR/export),
    with ``<file>.json`` beside it; the written file is run again on ``check_items`` test items and its
    logits must match PyTorch's to max |Δ| < ``tolerance``, else ExportError is raised and nothing is written.
    The files are written and checked in a private staging folder inside ``out`` and then renamed into place
    (``peerlearn.safe_write``): never through a link, never outside ``out`` (or RUN_DIR), no partial file.

    ``raw_input`` ("nchw" or "nhwc", images only, onnx and torchscript): the exported model takes the source's
    uint8 images and does the training pipeline's resize and normalisation itself (``RawImageModel``); the
    check compares it on raw test images with PyTorch on the same images preprocessed by the training code.
    ``trust_code``: see ``peerlearn.load_run``.
    """
    from peerlearn.api import load_run

    if fmt not in formats.FORMATS:
        raise ExportUsageError(f"Unknown export format {fmt!r}; allowed: {', '.join(formats.FORMATS)}.")
    if exporter not in formats.EXPORTERS:
        raise ExportUsageError(f"Unknown ONNX exporter {exporter!r}; allowed: {', '.join(formats.EXPORTERS)}.")
    if isinstance(check_items, bool) or not isinstance(check_items, int):
        raise ExportUsageError(f"--check-items must be an integer, got {check_items!r}.")
    if progress not in ("auto", "on", "off", True, False, None):
        raise ExportUsageError(f"--progress must be one of auto, on, off, got {progress!r}.")
    if check_items < 1:
        raise ExportUsageError(f"--check-items must be at least 1, got {check_items}.")
    if raw_input is not None and raw_input not in LAYOUTS:
        raise ExportUsageError(f"Unknown raw input layout {raw_input!r}; allowed: {', '.join(LAYOUTS)}.")
    if raw_input is not None and fmt == "safetensors":
        raise ExportUsageError("--raw-input puts the preprocessing into a graph: use --format onnx or torchscript "
                               "(safetensors holds the weights only).")
    if member is not None and (not isinstance(member, str) or not member.strip()):
        raise ExportUsageError(f"--member must name a member, got {member!r}.")
    if not isinstance(tolerance, (int, float)) or not 0 < tolerance < float("inf"):
        raise ExportUsageError(f"the tolerance must be a finite number > 0, got {tolerance!r}.")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ExportUsageError(f"--out {str(out)!r} is a file; name a folder (it is made if missing).")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device="cpu", command="export", trust_code=trust_code)
    # the files go into RUN_DIR/export or the folder the user named, never through a link on the way
    root = Path(out) if out is not None else run_dir
    target = Path(out) if out is not None else run_dir / EXPORT_DIR
    ensure_folder(target, root, create_root=out is not None)
    check_writable(target, "export folder")
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
    description = run.description  # the recorded inputs; the training data is read only for the check items
    if raw_input is not None:
        if not description.is_image:
            raise ExportUsageError("--raw-input is for image data; this run's inputs are feature vectors.")
        if run.pipeline.dtype != "uint8":
            raise ExportUsageError("--raw-input takes uint8 images, but this run was trained on float images "
                                   "given from Python; export without --raw-input.")
        if run.has_data:
            inputs, resized, split = raw_check_batch(run.config, check_items, raw_input)
        else:
            resized, split = stored_random_inputs(run, check_items), "random"
            inputs = resized.permute(0, 2, 3, 1).contiguous() if raw_input == "nhwc" else resized
        with torch.no_grad():
            reference = model(run.normalizer(resized).float()).cpu().numpy()
        model = RawImageModel(model, description.mean, description.std, run.config.data.image_size, raw_input).eval()
    else:
        inputs, split = check_batch(run, check_items)
        with torch.no_grad():
            reference = model(inputs).cpu().numpy()

    model_path = target / f"{name}{formats.SUFFIX[fmt]}"
    info_path = target / f"{model_path.name}.json"
    network = run.cohort[name].info["network"]
    info = export_info(description, name, network.get("model", network["kind"]), network.get("model_args", {}), fmt,
                       model_path.name, str(run_dir))
    info["network"] = network  # how peerlearn.run_reader.build_network rebuilds it (safetensors)
    if raw_input is not None:
        info["input"] = describe_raw_input(inputs, raw_input)
        info["preprocessing"]["in_graph"] = True
    example = inputs[: max(2, min(len(inputs), 8))]
    if len(example) < 2:  # a dynamic batch axis needs an example batch larger than one
        example = example.repeat(2, *[1] * (example.dim() - 1))

    bar = progress_bar(total=2, desc=f"export {name} ({fmt})", mode=progress)
    names = [model_path.name, formats.external_data_path(model_path).name, info_path.name]  # the JSON last
    try:
        with staged_files(target, root) as stage:  # written and checked in private, then renamed into place
            diff, runtime = _write_and_check(model, example, inputs, reference, fmt, exporter, tolerance, name,
                                             network, info, stage / names[0], stage / names[2], bar)
            info["check"] = {"split": split, "items": len(inputs), "max_abs_diff": diff, "tolerance": tolerance,
                             "runtime": runtime}
            info["files"] = [n for n in names if (stage / n).exists()]
            (stage / names[2]).write_text(json.dumps(info, indent=2))
            stage.publish(names)
    except BaseException as error:
        disk = disk_error_in(error)
        if disk is not None:
            raise write_failure(disk, model_path, "the export") from None
        raise
    finally:
        bar.close()
    return ExportResult(name, fmt, model_path, info_path, diff, tolerance, len(inputs), split, info)


def _write_and_check(model, example, inputs, reference, fmt, exporter, tolerance, name, network, info,
                     model_path: Path, info_path: Path, bar) -> tuple[float, str]:
    """Write the model (and its JSON, which the safetensors reload reads) and run the written file again:
    max |Δ logits| against ``reference`` and the runtime that computed it."""
    if fmt == "onnx":
        info["onnx"] = formats.save_onnx(model, example, model_path, exporter)
    elif fmt == "torchscript":
        formats.save_torchscript(model, example, model_path)
    else:
        formats.save_safetensors(model, model_path, {"member": name, "network": json.dumps(network)})
    bar.update(1)
    info_path.write_text(json.dumps(info, indent=2))
    if fmt == "onnx":
        candidate, runtime = formats.run_onnx(model_path, inputs), "onnxruntime"
    elif fmt == "torchscript":
        candidate, runtime = formats.run_torchscript(model_path, inputs), "torch.jit.load"
    else:
        candidate, runtime = run_exported_safetensors(info_path, inputs), "peerlearn.run_reader + safetensors"
    diff = check_outputs(reference, candidate, tolerance, what=f"{fmt} export of member {name!r}")
    bar.update(1)
    return diff, runtime
