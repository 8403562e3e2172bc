"""The Python entry points: ``train``, ``load_run``.

    import peerlearn
    result = peerlearn.train("configs/fmnist_dml_pair.yaml", **{"train.epochs": 5})
    print(result.summary["members"]["a"]["test"]["top1"])
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from peerlearn.config import RunConfig, load_config, save_config
from peerlearn.data import load_data
from peerlearn.engine.checkpoint import remove_stale_temporaries
from peerlearn.engine.cohort import Cohort
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.engine.run_dir import RunLock, create_run_dir, ensure_writable
from peerlearn.engine.trainer import CHECKPOINT_NAME, Trainer
from peerlearn.errors import PeerlearnError, ResourceError
from peerlearn.recipes import get_recipe

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"


@dataclass
class RunResult:
    """What a finished run leaves: its directory, summary, resolved config and the trained cohort."""

    run_dir: Path
    summary: dict[str, Any]
    config: RunConfig
    cohort: Cohort
    recipe: Any

    def member_accuracy(self, split: str = "test") -> dict[str, float]:
        return {name: entry[split]["top1"] for name, entry in self.summary["members"].items() if split in entry}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PeerlearnError(f"Invalid config: key 'train.device' has the value {name!r}, but no CUDA device is "
                             "available here; use auto or cpu.")
    return device


def set_determinism(config: RunConfig) -> None:
    """Seed every global generator (torch, numpy, Python) so a run, and its checkpoints, repeat exactly."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also writes NaN into every new tensor, a safeguard against reading uninitialised
        # memory that the training code never does; it cost ~10% of a small CNN run's CPU time (see
        # docs/results.md, whole-run). The results stay deterministic without it (torch.utils.deterministic).
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _normalise_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Python keyword overrides: ``optim__lr=0.05`` or ``**{"optim.lr": 0.05}``."""
    return {key.replace("__", "."): value for key, value in overrides.items()}


def prepare_run(config: RunConfig, distributed=None):
    """Data, device, recipe and cohort for a validated config (nothing trained yet).

    ``distributed`` (a DistContext) places this process on its rank's device and member.
    """
    from peerlearn.engine.acceleration import configure

    recipe_class = get_recipe(config.recipe)  # the recipe registry checks the name, before any data is read
    set_determinism(config)
    device = distributed.device if distributed is not None else resolve_device(config.train.device)
    data = load_data(config.data, seed=config.seed)
    recipe = recipe_class(config, data, device)
    recipe.distributed = distributed
    recipe.build_cohort()
    configure(recipe, device)
    return data, device, recipe


def train(config: Union[str, Path, dict, RunConfig, None] = None, *, out: Union[str, Path] = "runs",
          resume: Union[str, Path, None] = None, overrides: Optional[list[str]] = None,
          **keyword_overrides: Any) -> RunResult:
    """Train the cohort a config describes; return the run's results.

    ``config`` is a YAML path, a dict or a ``RunConfig``; ``overrides`` are ``key=value`` strings and
    keyword overrides are dotted keys (``**{"optim.lr": 0.05}``) or ``optim__lr=0.05``.
    ``resume`` continues the run in that directory from its last checkpoint (the config is the run's own).
    """
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = run_dir / CHECKPOINT_NAME
        if not checkpoint.is_file():
            raise PeerlearnError(f"Cannot resume {str(run_dir)!r}: it holds no {CHECKPOINT_NAME}.")
        run_config = load_config(run_dir / CONFIG_NAME)
        ensure_writable(run_dir, "run directory", "Make it writable (or copy the run elsewhere) and resume again.")
    else:
        run_config = load_config(config, overrides)
        if keyword_overrides:
            run_config = load_config(run_config, _normalise_overrides(keyword_overrides))
        checkpoint = None
        ensure_writable(Path(out))  # fail before loading data or training
    if run_config.tracking.mlflow:  # fail before any work when the optional extra is missing
        from peerlearn.engine.tracking import require_mlflow

        require_mlflow()
    from peerlearn.engine.distributed import init_distributed, shared_value, shutdown

    distributed = init_distributed(run_config)  # None unless started by torchrun / --launcher
    try:
        result = _train_prepared(run_config, distributed, out, resume, checkpoint, shared_value)
    except BaseException:
        shutdown(distributed, clean=False)  # the other processes are stopped by the launcher
        raise
    shutdown(distributed)
    return result


def _train_prepared(run_config: RunConfig, distributed, out, resume, checkpoint, shared_value) -> RunResult:
    """Train in this process; the main process holds the run directory's lock (``RunLock``) throughout."""
    is_main = distributed is None or distributed.is_main
    lock = None
    try:
        if resume is not None and is_main:
            lock = RunLock(Path(resume)).acquire()
            remove_stale_temporaries(Path(resume))  # half-written files of a killed process; the lock is ours
        data, device, recipe = prepare_run(run_config, distributed)
        if resume is None:
            run_dir = create_run_dir(Path(out), run_config.name) if is_main else None
            run_dir = Path(shared_value(distributed, str(run_dir) if run_dir else None))
            if is_main:
                lock = RunLock(run_dir).acquire()
                try:
                    save_config(run_config, run_dir / CONFIG_NAME)
                except OSError as error:
                    raise ResourceError(f"Cannot write {str(run_dir / CONFIG_NAME)!r}: "
                                        f"{error.strerror or error}.") from None
        else:
            run_dir = Path(resume)
        return _fit(run_config, distributed, is_main, run_dir, checkpoint, data, device, recipe)
    finally:
        if lock is not None:
            lock.release()


def _fit(run_config: RunConfig, distributed, is_main: bool, run_dir: Path, checkpoint: Optional[Path], data, device,
         recipe) -> RunResult:
    trainer = Trainer(run_config, recipe.cohort, recipe.stages(), recipe.train_stream, recipe.eval_streams,
                      run_dir, callbacks=recipe.callbacks(),
                      extra_state=getattr(recipe, "extra_state", None),
                      load_extra_state=getattr(recipe, "load_extra_state", None))
    recipe.trainer = trainer
    trainer.distributed = distributed
    for logger in getattr(recipe, "extra_loggers", lambda: [])():
        trainer.extra_loggers = getattr(trainer, "extra_loggers", []) + [logger]
    started = time.perf_counter()
    final = trainer.fit(resume_from=checkpoint)
    summary = build_summary(run_config, data, recipe, final, device, time.perf_counter() - started)
    if distributed is not None:
        summary["processes"] = distributed.world_size
    if is_main:
        try:
            (run_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
        except OSError as error:
            raise ResourceError(f"Cannot write {str(run_dir / SUMMARY_NAME)!r}: {error.strerror or error}; the "
                                f"weights are in {str(run_dir / 'model.safetensors')!r}.") from None
    return RunResult(run_dir, summary, run_config, recipe.cohort, recipe)


def build_summary(config: RunConfig, data, recipe, final: dict[str, Any], device: torch.device,
                  wall_seconds: float) -> dict[str, Any]:
    """summary.json: final per-member and ensemble scores on validation and test, and the context."""
    members: dict[str, dict[str, Any]] = {}
    ensemble: dict[str, Any] = {}
    for split, results in final["final"].items():
        for name, scores in results.items():
            target = ensemble if name == ENSEMBLE else members.setdefault(name, {})
            target[split] = scores
    return {
        "name": config.name,
        "recipe": config.recipe,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                  "labelled_train": int((data.train.y >= 0).sum())},
        "members": members,
        "ensemble": ensemble,
        "epochs": final["epochs"],
        "steps": final["steps"],
        "train_seconds": final["train_seconds"],
        "wall_seconds": round(wall_seconds, 3),
        "device": str(device),
        "torch": torch.__version__,
        "platform": platform.platform(),
        **recipe.summary_extra(),
    }


def load_run(run_dir: Union[str, Path], device: str = "cpu"):
    """Rebuild a finished run's data, recipe and cohort with its final weights (for analyses and export)."""
    from peerlearn.engine.checkpoint import load_weights

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise PeerlearnError(f"{str(run_dir)!r} is not a peerlearn run directory (no {CONFIG_NAME}).")
    config = load_config(run_dir / CONFIG_NAME, [f"train.device={device}"])
    # initial weights (e.g. a teacher's run directory) may be gone: the run's own final weights replace them
    weighted = {f"members.{i}.weights": str(run_dir) for i, m in enumerate(config.members) if m.weights}
    if weighted and (run_dir / "model.safetensors").is_file():
        config = load_config(config, weighted)
    data, _, recipe = prepare_run(config)
    weights_path = run_dir / "model.safetensors"
    if not weights_path.is_file():
        raise PeerlearnError(f"The run {str(run_dir)!r} has no model.safetensors: it has not finished. "
                             "Resume it with --resume first.")
    for member in recipe.cohort:
        member.model.load_state_dict(load_weights(weights_path, member.name))
    recipe.cohort.eval()
    return config, data, recipe
