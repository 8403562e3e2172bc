"""Read a run directory back: its members with their final weights and its evaluation inputs.

Every after-training command (``evaluate``, ``analyze``, ``report``, ``export``, ``probe``) and
``peerlearn.load_run`` goes through ``RunReader``. It reads what the run recorded about itself
(``run.json``, written by ``engine.run_record``; see docs/runs.md) and never rebuilds the training
setup: no recipe is constructed, no teacher or backbone file is opened, no feature cache is needed.

* members: each network is rebuilt from its recorded description (a registry name and arguments, a
  ``package.module:qualname`` factory that registered it, or a transfer network's backbones and head),
  loaded with the final weights (``model.safetensors``; for an interrupted run, the checkpoint's) and put
  in eval mode; its role (student / teacher / frozen) comes with it.
* inputs: the dataset is read from its source with the recorded data settings and seed (so the same
  validation and test items), and normalised with the recorded statistics.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from peerlearn.data.batches import BatchStream, Normalizer
from peerlearn.data.bundle import DataBundle, Split
from peerlearn.engine.checkpoint import load_state, load_weights
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.run_record import RUN_RECORD_NAME
from peerlearn.errors import ConfigError, PeerlearnError

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_NAME = "checkpoint.safetensors"
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- networks
def _import_factory(location: str, name: str):
    """Import the module of a registered builder (``module:qualname``); importing it usually registers it."""
    module_name, _, qualname = location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PeerlearnError(
            f"The run's model {name!r} was registered from Python by {location!r}, which cannot be imported here "
            f"({error}). Put that module on PYTHONPATH (or register the model before loading the run).") from None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def ensure_registered(network: dict[str, Any]) -> None:
    """Make the recorded model name buildable: import (and if needed register) the recorded factory."""
    from peerlearn.models.registry import available_models, register_model

    name, location = network["model"], network.get("factory")
    if name in available_models() or not location:
        return
    builder = _import_factory(location, name)
    if name in available_models():
        return
    if not callable(builder) or location.split(":", 1)[0] == "__main__":
        raise PeerlearnError(f"The run's model {name!r} was registered from {location!r}, which cannot be found "
                             "again in this process; register the model before loading the run.")
    register_model(name)(builder)


def recipe_of(record: dict[str, Any]):
    """The recipe class of a run: the registered one of its name, else the recorded ``module:Class`` imported
    and registered (a recipe of your own in an importable module); None when neither is found here."""
    from peerlearn.recipes import RECIPE_NAMES, get_recipe, register_recipe

    name, location = record.get("recipe"), record.get("recipe_class")
    if name in RECIPE_NAMES:
        return get_recipe(name)
    if not location or location.split(":", 1)[0] == "__main__":
        return None
    try:
        recipe = _import_factory(location, name)
    except PeerlearnError:
        return None
    if not isinstance(recipe, type):
        return None
    if name not in RECIPE_NAMES:  # importing its module may have registered it already
        register_recipe(name, recipe)
    return get_recipe(name)


def check_command(record: dict[str, Any], recipe, command: str, run_dir: Path) -> None:
    """Refuse (exit 2) ``command`` on a run whose recipe (``recipe_of``; None: not found here, the base
    commands apply) does not list it in ``Recipe.commands``."""
    from peerlearn.recipes import RECIPE_NAMES, get_recipe
    from peerlearn.recipes.base import Recipe

    commands = recipe.commands if recipe is not None else Recipe.commands
    if command in commands:
        return
    owners = [name for name in RECIPE_NAMES if command in get_recipe(name).commands]
    hint = {"probe": " (it reads a network of blocks, layerwise_cnn, as greedy layerwise training builds it)"}
    raise ConfigError(f"`peerlearn {command}` does not apply to {str(run_dir)!r}, a run of recipe "
                      f"{record.get('recipe')!r}; it applies to runs of {', '.join(owners) or 'no recipe'}"
                      f"{hint.get(command, '')}. This run's commands: {', '.join(commands)}.")


def build_network(network: dict[str, Any]) -> nn.Module:
    """A fresh module of the recorded architecture (untrained weights), in eval mode."""
    kind = network.get("kind")
    if kind == "registry":
        from peerlearn.models import create_model

        ensure_registered(network)
        model = create_model(network["model"], **network["shape_args"], **network["model_args"])
        for key, value in network.get("attributes", {}).items():
            setattr(model, key, value)
        if network.get("drop_classifier"):
            model.classifier = nn.Identity()
        if network.get("class_bias") is not None:
            from peerlearn.recipes.class_bias import set_class_bias

            set_class_bias(model, torch.tensor(network["class_bias"]))
        return model.eval()
    if kind == "timm":
        from peerlearn.transfer.backbone import TimmBackbone

        try:
            import timm
        except ImportError:
            raise PeerlearnError("This run's backbone comes from timm, which is not installed: "
                                 "pip install 'peerlearn[timm]'.") from None
        return TimmBackbone(timm.create_model(network["name"], pretrained=False, num_classes=0,
                                              in_chans=network["in_chans"])).eval()
    if kind == "transfer":
        from peerlearn.transfer.model import TransferModel

        backbones = [build_network(b) for b in network["backbones"]]
        return TransferModel(backbones, network["num_classes"], network["input_sizes"],
                             dropout=network.get("dropout", 0.0), input_pads=network["input_pads"],
                             background=network["background"]).eval()
    if kind == "view":  # one branch of a shared-trunk network (an exported view)
        from peerlearn.recipes.base import Recipe

        return Recipe.build_view(build_network(network["owner"]), network["view"]).eval()
    raise PeerlearnError(f"Unknown network kind {kind!r} in the run record; this peerlearn cannot rebuild it.")


# --------------------------------------------------------------------------- the loaded run
@dataclass
class LoadedRun:
    """A run read back: ``cohort`` (eval-mode members with final weights; ``member.info['role']``), the
    dataset, the normaliser and the streams over its splits. Unpacks as ``config, data, run`` for code
    written against the earlier ``load_run``."""

    run_dir: Path
    record: dict[str, Any]
    config: Any  # the RunConfig of config.yaml
    data: DataBundle
    cohort: Cohort
    normalizer: Normalizer
    device: torch.device
    weights_file: Path
    roles: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.config, self.data, self))

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    @property
    def finished(self) -> bool:
        return bool(self.record.get("finished"))

    @property
    def ensemble(self) -> list[str]:
        """Members averaged into the cohort's ensemble (as in training's final evaluation)."""
        return [n for n in self.record.get("ensemble", []) if n in self.cohort.names]

    def ensemble_of(self, names: Sequence[str]) -> list[str]:
        """The ensemble's members among ``names``."""
        return [n for n in self.ensemble if n in names]

    def select(self, members: Optional[Sequence[str]] = None) -> list[str]:
        """The named members (when None: every participant that gives logits, so not a connector or a memory
        bank); an unknown name is an error listing the run's members."""
        names = self.cohort.names
        unknown = [m for m in members or [] if m not in names]
        if unknown:
            raise ConfigError(f"The run has no member {unknown[0]!r}; its members: {', '.join(names)}.")
        return list(members or self.cohort.evaluable)

    def split(self, name: str, limit: Optional[int] = None) -> Split:
        if name not in SPLITS:
            raise ConfigError(f"Unknown split {name!r}; allowed: {', '.join(SPLITS)}.")
        part = getattr(self.data, name)
        if limit is not None and limit < len(part):
            part = Split(part.x[:limit], part.y[:limit])
        return part

    def stream(self, name: str, limit: Optional[int] = None) -> BatchStream:
        """An unshuffled, un-augmented stream over split ``name`` (optionally its first ``limit`` items)."""
        return self.stream_of(self.split(name, limit))

    def stream_of(self, split: Split) -> BatchStream:
        return BatchStream(split, self.config.data.eval_batch_size, self.normalizer, self.device, shuffle=False)

    @property
    def eval_streams(self) -> dict[str, BatchStream]:
        """The evaluation streams of training: validation and test."""
        return {name: self.stream(name) for name in ("val", "test")}


class RunReader:
    """Reads ``run_dir`` from what it recorded about itself. ``read()`` gives a ``LoadedRun``."""

    def __init__(self, run_dir: Union[str, Path], device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        if not (self.run_dir / CONFIG_NAME).is_file():
            raise PeerlearnError(f"{str(self.run_dir)!r} is not a peerlearn run directory (no {CONFIG_NAME}).")

    def record(self) -> dict[str, Any]:
        """run.json, or the copy inside the checkpoint when run.json is missing."""
        path = self.run_dir / RUN_RECORD_NAME
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise PeerlearnError(f"Cannot read {str(path)!r}: {error}.") from None
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if checkpoint.is_file():
            record = load_state(checkpoint).get("run")
            if record:
                return record
        raise PeerlearnError(f"The run {str(self.run_dir)!r} has no {RUN_RECORD_NAME} (it was made by an older "
                             "peerlearn, or stopped before its first checkpoint); train it again to read it.")

    def weights(self, names: Sequence[str]) -> tuple[dict[str, dict[str, torch.Tensor]], Path]:
        """Each member's final weights: model.safetensors, else (an interrupted run) the last checkpoint's."""
        final = self.run_dir / WEIGHTS_NAME
        if final.is_file():
            return {name: load_weights(final, name) for name in names}, final
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if not checkpoint.is_file():
            raise PeerlearnError(f"The run {str(self.run_dir)!r} has neither {WEIGHTS_NAME} nor a checkpoint: "
                                 "nothing was trained yet.")
        members = load_state(checkpoint)["members"]
        return {name: members[name]["model"] for name in names}, checkpoint

    def config(self, record: dict[str, Any], recipe):
        """config.yaml, validated. A model registered from Python is found again first (its recorded factory);
        so is a recipe of your own (its recorded class), whose section the config holds. When that recipe
        cannot be imported here, its section is left out: reading a run needs none of the recipe's settings."""
        from peerlearn.config import RECIPE_SECTIONS, RunConfig, load_config
        from peerlearn.config.loading import read_config_file

        for member in record["members"]:  # a model registered from Python must be known to validate the config
            network = member.get("network") or {}
            for part in [network, *network.get("backbones", [])]:
                if part.get("kind") == "registry":
                    ensure_registered(part)
        overrides = [f"train.device={self.device}"]
        if recipe is not None:
            return load_config(self.run_dir / CONFIG_NAME, overrides)
        tree = read_config_file(self.run_dir / CONFIG_NAME)
        known = {**RunConfig.model_fields, **RECIPE_SECTIONS}
        return load_config({key: value for key, value in tree.items() if key in known}, overrides)

    def data(self, record: dict[str, Any], config) -> DataBundle:
        """The dataset read from its source with the recorded settings; the recorded statistics and classes."""
        from peerlearn.data.prepare import load_data

        recorded = record["data"]
        data_config = type(config.data).model_validate(recorded["config"])
        data = load_data(data_config, seed=recorded["seed"])
        sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
        if recorded.get("sizes", sizes) != sizes:
            raise PeerlearnError(f"The dataset {recorded['source']!r} read now has splits of {sizes} items, but the run "
                                 f"{str(self.run_dir)!r} was trained and scored on {recorded['sizes']}: its files "
                                 "changed since; evaluate with the dataset the run was trained on.")
        data.mean, data.std = list(recorded["normalization"]["mean"]), list(recorded["normalization"]["std"])
        data.class_names = list(recorded["class_names"])
        return data

    def cohort(self, record: dict[str, Any], recipe=None) -> tuple[Cohort, Path]:
        """The run's participants with their final weights, in eval mode: member networks (rebuilt from their
        recorded networks), auxiliary modules (rebuilt by the run's recipe from their recorded spec, with their
        predictors when they give logits) and views (a shared-trunk branch, taken from its owner)."""
        from peerlearn.recipes.base import Recipe

        rows = record["members"]
        saved = [m["name"] for m in rows if "view" not in m]
        states, source = self.weights(saved)
        owner_class = recipe or Recipe
        members, modules = [], {}
        for entry in rows:
            if "view" in entry:
                continue
            if entry.get("role") == "auxiliary":
                if recipe is None:
                    raise PeerlearnError(f"The run's auxiliary module {entry['name']!r} is rebuilt by its recipe "
                                         f"{record.get('recipe')!r}, which cannot be found here.")
                model = recipe.build_auxiliary(entry["name"], entry.get("module", {}))
            else:
                model = build_network(entry["network"])
            try:
                model.load_state_dict(states[entry["name"]])
            except RuntimeError as error:
                raise PeerlearnError(f"The weights of member {entry['name']!r} in {str(source)!r} do not fit its "
                                     f"recorded network: {str(error).strip().splitlines()[0]}") from None
            model.to(self.device).eval()
            modules[entry["name"]] = model
            kind = "auxiliary" if entry.get("role") == "auxiliary" else "network"
            members.append(Member(entry["name"], model, trainable=entry["role"] == "student", kind=kind,
                                  info={"role": entry["role"], "network": entry.get("network")
                                        or {"kind": "auxiliary", "module": entry.get("module", {})}}))
        for member, entry in zip([m for m in members if m.kind == "auxiliary"],
                                 [e for e in rows if e.get("role") == "auxiliary"]):
            if entry.get("predicts"):
                member.predictor = owner_class.build_predictor(entry["name"], entry.get("module", {}), modules)
                member.predictor.to(self.device).eval()
        for entry in rows:
            if "view" not in entry:
                continue
            spec = {k: v for k, v in entry["view"].items() if k != "of"}
            owner = entry["view"]["of"]
            view = owner_class.build_view(modules[owner], spec).to(self.device).eval()
            owner_network = next(m.info["network"] for m in members if m.name == owner)
            members.append(Member(entry["name"], view, trainable=entry["role"] == "student", kind="view",
                                  view_of=owner, info={"role": entry["role"], "view": entry["view"],
                                                       "network": {"kind": "view", "owner": owner_network,
                                                                   "view": spec}}))
        order = [m["name"] for m in rows]
        members.sort(key=lambda m: order.index(m.name))
        return Cohort(members), source

    def read(self, command: Optional[str] = None) -> LoadedRun:
        """The run, read for ``command`` (e.g. "probe": refused unless the run's recipe lists it in
        ``Recipe.commands``; None: any use)."""
        record = self.record()
        recipe = recipe_of(record)
        if command is not None:
            check_command(record, recipe, command, self.run_dir)
        config = self.config(record, recipe)
        data = self.data(record, config)
        cohort, source = self.cohort(record, recipe)
        normalizer = Normalizer(data.mean, data.std, self.device, data.is_image)
        return LoadedRun(self.run_dir, record, config, data, cohort, normalizer, self.device, source,
                         roles={m["name"]: m["role"] for m in record["members"]})


def read_run(run_dir: Union[str, Path], device: str = "cpu", command: Optional[str] = None) -> LoadedRun:
    """``RunReader(run_dir, device).read(command)``."""
    return RunReader(run_dir, device).read(command)
