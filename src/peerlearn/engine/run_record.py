"""``run.json``: what a run directory says about itself, so that it can be read without its training setup.

The trainer writes it (atomically) with every checkpoint and once more when training ends; the same
record is stored inside the checkpoint. It holds everything ``peerlearn.run_reader.RunReader`` needs
to rebuild the members and their evaluation inputs::

    {"format": 1, "recipe": "distill", "recipe_class": "peerlearn.recipes.distill:DistillRecipe", "finished": true,
     "stage": {"index": 1, "name": "distill", "epoch": 3, "names": ["teacher", "distill"]},
     "members": [{"name": "t", "role": "teacher", "network": NETWORK}, ...],
     "ensemble": ["s"],                      # members whose mean probability is the cohort's ensemble
     "evaluated": ["t", "s"],                # members scored in the summary
     "data": {"seed": 0, "config": {...the data section...}, "source": "digits",
              "class_names": [...], "num_classes": 10, "model_kwargs": {...},
              "input": {"kind": "image", "channels": 1, "height": 8, "width": 8, "dtype": "uint8",
                        "value_range": [0, 16]} | {"kind": "features", "features": F, "shape": [F], ...},
              "normalization": {"scale": 1/255, "mean": [...], "std": [...]},
              "preprocessing": {"mode": "L", "resize": null | "pillow" | "interpolate"},   # images
              "feature_names": [...], "label_column": "label"},                          # features
                                                     # (peerlearn.data.preprocess.InputPipeline)
     ...recipe extras (e.g. "feature_cache" of a transfer run in features mode)}

NETWORK is one of::

    {"kind": "registry", "model": NAME, "model_args": {...}, "shape_args": {num_classes, in_channels, ...},
     "factory": "package.module:qualname" | null, "attributes": {"depth": 3}, "class_bias": [...] | null,
     "drop_classifier": false}
    {"kind": "timm", "name": "resnet18", "in_chans": 3}
    {"kind": "transfer", "backbones": [NETWORK, ...], "num_classes": C, "input_sizes": [...], "input_pads": [...],
     "background": [...], "dropout": 0.0}

Roles: ``student`` (trained by the recipe), ``teacher`` (a distillation teacher, frozen when students
learn), ``frozen`` (any other member that never trains).

A recipe's other participants (``recipes.base.Recipe.participant_record``) have rows of their own::

    {"name": "gate", "role": "auxiliary", "module": {...the spec it was declared with...}, "predicts": true}
    {"name": "net0", "role": "branch", "view": {"of": "net", "branch": 0}}

An auxiliary module is rebuilt by its recipe (``build_auxiliary``, ``build_predictor``); a view is taken from its
owner (``Recipe.build_view``) and has no weights of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from peerlearn.engine.checkpoint import atomic_write
from peerlearn.run_files import RUN_RECORD_NAME

RECORD_FORMAT = 1
ROLES = ("student", "teacher", "frozen", "multibranch")  # multibranch: a network whose rows are its branches


def registry_network(model: str, model_args: dict, shape_args: dict, attributes: Optional[dict] = None,
                     class_bias: Optional[list[float]] = None, drop_classifier: bool = False) -> dict[str, Any]:
    """A network built by ``peerlearn.models.create_model(model, **shape_args, **model_args)``.

    ``factory`` records where the registered builder lives (``module:qualname``), so that a model
    registered from Python is found again by importing that module in another process."""
    from peerlearn.models.registry import builder_location

    return {"kind": "registry", "model": model, "model_args": dict(model_args), "shape_args": dict(shape_args),
            "factory": builder_location(model), "attributes": dict(attributes or {}),
            "class_bias": class_bias, "drop_classifier": drop_classifier}


def data_pipeline(data_config: Any, seed: int, data) -> dict[str, Any]:
    """The recorded data source and input pipeline: the ``data`` section (source, splits, resize), the
    seed of the splits, the normalisation statistics, the input layout and the class names."""
    shape = list(data.input_shape)
    if data.is_image:
        channels, height, width = shape
        layout = {"kind": "image", "channels": channels, "height": height, "width": width}
        scale = 1 / 255
    else:
        layout = {"kind": "features", "features": data.in_features, "shape": shape}
        scale = 1.0
    from peerlearn.data.preprocess import InputPipeline

    pipeline = InputPipeline.of_run(data_config, data).to_record()
    layout.update(pipeline.pop("input"))
    return {"seed": seed, "config": data_config.model_dump(mode="json"), "source": data.name,
            "class_names": list(data.class_names), "num_classes": data.num_classes,
            "model_kwargs": data.model_kwargs(), "input": layout,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "normalization": {"scale": scale, "mean": list(data.mean), "std": list(data.std)}, **pipeline}


def stage_record(index: int, name: str, epoch: int, names: list[str]) -> dict[str, Any]:
    return {"index": index, "name": name, "epoch": epoch, "names": list(names)}


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``RUN_DIR/run.json`` atomically (a reader never sees half a file)."""
    text = json.dumps(record, indent=2)
    atomic_write(Path(run_dir) / RUN_RECORD_NAME, lambda tmp: Path(tmp).write_text(text))
