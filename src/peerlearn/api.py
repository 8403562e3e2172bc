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

from pydantic import ValidationError

from peerlearn.config import MemberConfig, RunConfig, load_config
from peerlearn.data import load_data
from peerlearn.engine.checkpoint import remove_stale_temporaries
from peerlearn.engine.cohort import Cohort
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.engine.run_dir import RunLock, create_run_dir, ensure_writable, save_config, write_text_file
from peerlearn.engine.trainer import CHECKPOINT_NAME
from peerlearn import startup_gc
from peerlearn.errors import ConfigError, PeerlearnError, ResourceError
from peerlearn.recipes import get_recipe
from peerlearn.trust import (config_references, record_files, require_trusted_references, run_is_trusted,
                             trusting_code)
from peerlearn.data.user import UserData
from peerlearn.user_inputs import for_resume, merge_user_inputs
from peerlearn.run_files import CONFIG_NAME, SUMMARY_NAME, WEIGHTS_NAME



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
        raise ConfigError(f"Invalid config: key 'train.device' has the value {name!r}, but no CUDA device is "
                             "available here; use auto or cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"Invalid config: key 'train.device' has the value {name!r}, but there are only "
                          f"{torch.cuda.device_count()} CUDA devices here.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"Invalid config: key 'train.device' has the value {name!r}, but no MPS device is "
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


def prepare_run(config: RunConfig, distributed=None, user=None):
    """Data, device, recipe and cohort for a validated config (nothing trained yet).

    ``distributed`` (a DistContext) places this process on its rank's device and member; ``user`` (a
    ``UserInputs``) holds members and data given as Python objects.
    """
    from peerlearn.engine.acceleration import configure

    recipe_class = get_recipe(config.recipe)  # the recipe registry checks the name, before any data is read
    set_determinism(config)
    device = distributed.device if distributed is not None else resolve_device(config.train.device)
    user_data = user.data if user is not None else None
    data = load_data(config.data, seed=config.seed,
                     raw=user_data.to_raw(config.data) if user_data is not None else None)
    if user_data is not None:
        data.batch_transform = user_data.transform
    recipe = recipe_class(config, data, device, distributed=distributed,
                          user_members=dict(user.members) if user is not None else None)
    recipe.build_cohort()
    configure(recipe, device)
    startup_gc.settle()  # start-up is over: collect again (a no-op unless the command line paused it)
    return data, device, recipe


def train(config: Union[str, Path, dict, RunConfig, None] = None, *, out: Union[str, Path] = "runs",
          resume: Union[str, Path, None] = None, overrides: Optional[list[str]] = None,
          members: Optional[dict[str, Any]] = None, data: Optional[UserData] = None,
          features_from: Optional[dict[str, str]] = None, changes: Optional[list[str]] = None,
          trust_code: bool = False, **keyword_overrides: Any) -> RunResult:
    """Train the cohort a config describes; return the run's results.

    ``config`` is a YAML path, a dict or a ``RunConfig``; ``overrides`` are ``key=value`` strings and
    keyword overrides are dotted keys (``**{"optim.lr": 0.05}``) or ``optim__lr=0.05``.
    ``resume`` continues the run in that directory from its last checkpoint (the config is the run's own);
    ``changes`` (``key=value`` strings, resume only) continue it with new settings, recorded in the run
    (``engine/resume.py``).
    ``members`` maps member names to your own networks (``nn.Module`` instances, factories or model
    names), ``data`` is a ``UserData`` of your Datasets or tensors and ``features_from`` maps member
    names to the submodule whose output gives their features (see ``peerlearn.user_inputs`` and
    docs/own-models.md). To resume such a run, pass the same ``members`` and ``data`` again.
    ``trust_code`` lets the runs this training reads (a resumed run, transfer sources) name code
    (``package.module:callable`` models) although they are not signed with your key (peerlearn.trust).
    """
    with trusting_code(trust_code):
        return _train(config, out, resume, overrides, members, data, features_from, changes, keyword_overrides)


def _train(config, out, resume, overrides, members, data, features_from, changes, keyword_overrides) -> RunResult:
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = run_dir / CHECKPOINT_NAME
        if not checkpoint.is_file():
            raise PeerlearnError(f"Cannot resume {str(run_dir)!r}: it holds no {CHECKPOINT_NAME}.")
        from peerlearn.engine.resume import resume_config

        run_config, change_records = resume_config(run_dir, run_dir / CONFIG_NAME, checkpoint, changes)
        require_trusted_references(config_references(run_config.model_dump()), run_is_trusted(run_dir), run_dir,
                                   source=f"the resumed run's {str(run_dir / CONFIG_NAME)!r}")
        ensure_writable(run_dir, "run directory", "Make it writable (or copy the run elsewhere) and resume again.")
        user = for_resume(run_config, members, data)
    else:
        if changes:
            raise ConfigError("changes (--change) continue a resumed run with new settings; a new run takes them "
                              "as overrides (key=value).")
        change_records = []
        run_config = load_config(config, overrides)
        explicit_members = "members" in run_config.model_fields_set
        if keyword_overrides:
            run_config = load_config(run_config, _normalise_overrides(keyword_overrides))
        run_config, user = merge_user_inputs(run_config, explicit_members, members, data, features_from)
        checkpoint = None
        ensure_writable(Path(out))  # fail before loading data or training
    if run_config.tracking.mlflow:  # fail before any work when the optional extra is missing
        from peerlearn.engine.tracking import require_mlflow

        require_mlflow()
    from peerlearn.engine.distributed import (collective_failure, init_distributed, shared_value, shutdown,
                                              world_from_env)

    world = world_from_env()
    get_recipe(run_config.recipe).check_capabilities(run_config, world[1] if world else 1)
    distributed = init_distributed(run_config)  # None unless started by torchrun / --launcher
    try:
        result = _train_prepared(run_config, distributed, out, resume, checkpoint, shared_value, user,
                                 change_records)
    except BaseException as error:
        shutdown(distributed, clean=False)  # the other processes are stopped by the launcher
        failure = collective_failure(distributed, error)  # a dead or stalled peer: exit 5, not a traceback
        if failure is not None:
            raise failure from None
        raise
    shutdown(distributed)
    return result


def _train_prepared(run_config: RunConfig, distributed, out, resume, checkpoint, shared_value,
                    user=None, change_records: Optional[list] = None) -> RunResult:
    """Train in this process; the main process holds the run directory's lock (``RunLock``) throughout."""
    is_main = distributed is None or distributed.is_main
    lock = None
    try:
        if resume is not None and is_main:
            lock = RunLock(Path(resume)).acquire()
            remove_stale_temporaries(Path(resume))  # half-written files of a killed process; the lock is ours
        # Data, device and members are set up before a change is recorded: a change refused there (say
        # train.device=cuda on a machine without one) must leave config.yaml and the checkpoint as they were.
        data, device, recipe = prepare_run(run_config, distributed, user)
        if change_records and is_main:
            from peerlearn.engine.resume import record_changes

            record_changes(run_config, change_records, checkpoint, Path(resume) / CONFIG_NAME)
        if change_records and distributed is not None:
            distributed.barrier()  # every process loads the checkpoint with the changes recorded
        if resume is None:
            run_dir = create_run_dir(Path(out), run_config.name) if is_main else None
            run_dir = Path(shared_value(distributed, str(run_dir) if run_dir else None))
            if is_main:
                lock = RunLock(run_dir).acquire()
                try:
                    save_config(run_config, run_dir / CONFIG_NAME)
                    record_files(run_dir, CONFIG_NAME)  # its hash, signed with the user's key (peerlearn.trust)
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
    trainer = recipe.build_trainer(run_dir)
    started = time.perf_counter()
    final = trainer.fit(resume_from=checkpoint)
    summary = build_summary(run_config, data, recipe, final, device, time.perf_counter() - started)
    if distributed is not None:
        summary["processes"] = distributed.world_size
    if trainer.changes:
        summary["changes"] = trainer.changes  # settings changed by `--resume --change`, with their step
    if is_main:
        try:
            write_text_file(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2))
            record_files(run_dir, SUMMARY_NAME)
        except OSError as error:
            raise ResourceError(f"Cannot write {str(run_dir / SUMMARY_NAME)!r}: {error.strerror or error}; the "
                                f"weights are in {str(run_dir / WEIGHTS_NAME)!r}.") from None
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
        "class_names": list(data.class_names),
        **recipe.summary_extra(),
    }


def load_run(run_dir: Union[str, Path], device: str = "cpu", command: Optional[str] = None,
             members: Optional[dict[str, Any]] = None, trust_code: bool = False):
    """A finished (or interrupted) run read back from its directory alone: a ``LoadedRun`` with the config,
    the eval-mode members with their final weights and roles, the input pipeline and class names, the
    dataset (read on first use; data given from Python is not stored with the run) and streams over the splits
    (``peerlearn.run_reader``). ``run.predict(inputs)`` gives class probabilities (``peerlearn.predict``).
    It unpacks as ``config, data, run``. With ``command`` (an after-training command's name), a run whose recipe
    does not list it in ``Recipe.commands`` is refused (ConfigError). ``members`` gives again, by name, modules
    from Python that the run cannot rebuild by itself (recorded as ``python-object:``); their weights come from
    the run.

    The run's files are checked against their recorded hashes (an edit or damage is ConfigError, exit 2).
    Code the run names (a ``package.module:callable`` model, a factory, a recipe class) is imported only when
    the run is signed with your key or ``trust_code`` is true (``peerlearn.trust``)."""
    from peerlearn.run_reader import read_run

    return read_run(run_dir, device=device, command=command, members=members, trust_code=trust_code)
