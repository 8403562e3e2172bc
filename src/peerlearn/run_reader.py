"""Read a run directory back: its members with their final weights and its evaluation inputs.

Every after-training command (``evaluate``, ``analyze``, ``report``, ``export``, ``probe``) and
``peerlearn.load_run`` goes through ``RunReader``. It reads what the run recorded about itself
(``run.json``, written by ``engine.run_record``; see docs/runs.md) and never rebuilds the training
setup: no recipe is constructed, no teacher or backbone file is opened, no feature cache is needed.

* members: each network is rebuilt from its recorded description (a registry name and arguments, a
  ``package.module:qualname`` factory that registered it, or a transfer network's backbones and head),
  loaded with the final weights (``model.safetensors``; for an interrupted run, the checkpoint's) and put
  in eval mode; its role (student / teacher / frozen) comes with it.
* inputs: the normalisation statistics, the input pipeline (``peerlearn.data.preprocess``) and the class names
  come from run.json, so a run loads, and predicts, without its training data. The dataset is read only when a
  command needs its splits (on first use of ``LoadedRun.data``): from its source with the recorded data settings
  and seed (so the same validation and test items). Data that was given from Python is not stored with the run:
  reading its splits is a ``DataError`` that says to score the run on labelled data instead.
* members given from Python as modules that the run cannot rebuild (``python-object:`` names) are passed
  again as ``members={name: module}``; their weights are loaded from the run.
* inputs: the dataset is read from its source with the recorded data settings and seed (so the same
  validation and test items), and normalised with the recorded statistics.

Before any of it, the run is checked (``peerlearn.trust``): every file read must match the SHA-256 the run
recorded in ``signature.json``, and ``run.json`` must have the known format and shape
(``peerlearn.run_checks``); otherwise exit 2 naming the file. Code the run names (a ``package.module:callable``
model, a model factory, an unregistered recipe class) is imported only when the run is signed with this
user's key or the caller trusts it (``trust_code=True``, ``--trust-code``): all of it is listed and refused
before anything is imported.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from peerlearn.data.batches import BatchStream, Normalizer
from peerlearn.data.bundle import DataBundle, Split
from peerlearn.engine.checkpoint import load_state, load_weights
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.run_record import RUN_RECORD_NAME
from peerlearn.data.user import PYTHON_SOURCE
from peerlearn import startup_gc
from peerlearn.errors import ConfigError, DataError, PeerlearnError
from peerlearn.run_checks import check_record
from peerlearn.run_files import CHECKPOINT_NAME, CONFIG_NAME, WEIGHTS_NAME
from peerlearn.trust import (RunRecords, config_references, needs_trust, read_records, reading, require_trusted_code,
                             require_trusted_references, trusting_code)

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- networks
def _import_factory(location: str, name: str, where: str = RUN_RECORD_NAME):
    """Import the module of a registered builder (``module:qualname``); importing it usually registers it.
    Refused unless what is being read is trusted (``peerlearn.trust.require_trusted_code``)."""
    require_trusted_code(location, where)
    module_name, _, qualname = location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or any error the module raises while it is imported
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
    builder = _import_factory(location, name, f"run.json: the factory of model {name!r}")
    if name in available_models():
        return
    if not callable(builder) or location.split(":", 1)[0] == "__main__":
        raise PeerlearnError(f"The run's model {name!r} was registered from {location!r}, which cannot be found "
                             "again in this process; register the model before loading the run.")
    register_model(name)(builder)


def recipe_of(record: dict[str, Any]):
    """The recipe class of a run: the one its recorded ``recipe`` value names when that is registered (or a
    reference whose module is already loaded: finding it runs no code), else its recorded class imported
    (``import_recorded_recipe``); None when neither is found here."""
    from peerlearn.recipes import find_recipe

    name = record.get("recipe")
    if isinstance(name, str):
        try:
            found = find_recipe(name, import_code=False)
        except ConfigError:
            found = None
        if found is not None:
            return found
    return import_recorded_recipe(record)


def import_recorded_recipe(record: dict[str, Any]):
    """Import the recipe class a run recorded (``recipe_class``, ``package.module:Class``) and register it under
    the run's ``recipe`` value, so that its config (and section) reads back; None when it cannot be found here
    (the run is still read, without its recipe's section, with the base commands).

    The one place where reading a run imports a recipe's code."""
    from peerlearn.recipes import register_recipe
    from peerlearn.recipes.base import Recipe

    name, location = record.get("recipe"), record.get("recipe_class")
    if not isinstance(name, str) or not isinstance(location, str) or location.split(":", 1)[0] == "__main__":
        return None
    require_trusted_code(location, "run.json: recipe_class")  # refused, never ignored, when not trusted
    module_name, _, qualname = location.partition(":")
    # TRUST: guarded by peerlearn.trust (require_trusted_code above: a run not signed with this user's key needs
    # --trust-code / trust_code=True before its recipe's module is imported)
    try:
        recipe: Any = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - not importable here (or failing): read the run without its recipe
        return None
    for part in qualname.split("."):
        recipe = getattr(recipe, part, None)
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        return None
    register_recipe(name, recipe)
    return recipe


def check_command(record: dict[str, Any], recipe, command: str, run_dir: Path) -> None:
    """Refuse (exit 2) ``command`` on a run whose recipe (``recipe_of``; None: not found here, the base
    commands apply) does not list it in ``Recipe.commands``."""
    from peerlearn.recipes import RECIPE_NAMES, get_recipe
    from peerlearn.recipes.base import Recipe

    commands = recipe.commands if recipe is not None else Recipe.commands
    if command in commands:
        return
    owners = [name for name in RECIPE_NAMES if command in get_recipe(name).commands]
    raise ConfigError(f"`peerlearn {command}` does not apply to {str(run_dir)!r}, a run of recipe "
                      f"{record.get('recipe')!r}; it applies to runs of {', '.join(owners) or 'no recipe'}. "
                      f"This run's commands: {', '.join(commands)}.")


def build_network(network: dict[str, Any]) -> nn.Module:
    """A fresh module of the recorded architecture (untrained weights), in eval mode."""
    kind = network.get("kind")
    if kind == "registry":
        from peerlearn.models import create_model

        require_trusted_code(network["model"], "a recorded network's model")
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
    if kind == "multibranch":  # K branches on a shared trunk (the online-distillation recipes' networks)
        from peerlearn.models.multibranch import from_record

        return from_record(network)
    if kind == "view":  # one branch of a shared-trunk network (an exported view)
        from peerlearn.recipes.base import Recipe

        return Recipe.build_view(build_network(network["owner"]), network["view"]).eval()
    raise PeerlearnError(f"Unknown network kind {kind!r} in the run record; this peerlearn cannot rebuild it.")


def network_references(network: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """(reference, where) of the code a recorded network would import: a ``package.module:callable`` model, or
    the factory of a model name that is not registered in this process."""
    from peerlearn.models.registry import available_models

    if network.get("kind") == "transfer":
        return [ref for index, backbone in enumerate(network["backbones"])
                for ref in network_references(backbone, f"{where}.backbones.{index}")]
    if network.get("kind") == "view":  # an exported branch: its owner's network names the code
        return network_references(network["owner"], f"{where}.owner")
    if network.get("kind") != "registry":
        return []
    found = [(network["model"], f"{where}.model")]
    if network["model"] not in available_models() and network.get("factory"):
        found.append((network["factory"], f"{where}.factory"))
    return found


def record_references(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Every reference to code in a (checked) run record: the members' networks and an unregistered recipe."""
    from peerlearn.recipes import RECIPE_NAMES

    found = []
    location = record.get("recipe_class")
    if record["recipe"] not in RECIPE_NAMES and location and location.split(":", 1)[0] != "__main__":
        found.append((location, "run.json recipe_class"))
    for index, member in enumerate(record["members"]):
        if "network" in member:  # auxiliaries and views are rebuilt by the recipe (a reference itself)
            found += network_references(member["network"], f"run.json members.{index}.network")
    return found


def code_references(run_dir: Union[str, Path]) -> list[tuple[str, str]]:
    """The code a run names (run.json when it is well formed, and config.yaml), for ``peerlearn trust`` to show
    what the user accepts. Nothing is imported."""
    from peerlearn.config.loading import read_config_file

    run_dir = Path(run_dir)
    found: list[tuple[str, str]] = []
    try:
        record = json.loads((run_dir / RUN_RECORD_NAME).read_text(encoding="utf-8"))
        check_record(record, run_dir / RUN_RECORD_NAME)
        found += record_references(record)
    except (OSError, ValueError, ConfigError):
        pass  # no run.json, or one that a read would refuse anyway
    try:
        tree = read_config_file(run_dir / CONFIG_NAME)
        found += [(ref, f"config.yaml {key}") for ref, key in config_references(tree)]
    except ConfigError:
        pass
    return [item for item in dict.fromkeys(found) if needs_trust(item[0])]
def _auxiliary_network(spec: dict[str, Any]) -> dict[str, Any]:
    """How an auxiliary module is described to readers of a view taken from it (an export's record): the network
    record its spec holds when it is a copy of a network (PCL's temporal mean), else its spec."""
    network = spec.get("network") if isinstance(spec, dict) else None
    if isinstance(network, dict) and network.get("kind") in {"registry", "multibranch"}:
        return network
    return {"kind": "auxiliary", "module": spec}


# --------------------------------------------------------------------------- the loaded run
class LoadedRun:
    """A run read back: ``cohort`` (eval-mode members with final weights; ``member.info['role']``), the
    normaliser, the input pipeline and class names from run.json, and (read on first use) the dataset and the
    streams over its splits. Unpacks as ``config, data, run`` for code written against the earlier ``load_run``.

    ``data`` may be given as a ``DataBundle`` or as a function that loads it: prediction never reads the training
    data, so a run trained on data given from Python loads (and predicts) without it; only the commands that score
    its splits need it (``DataError`` then, naming what to pass instead)."""

    def __init__(self, run_dir: Path, record: dict[str, Any], config: Any, data: Union[DataBundle, Callable[[], DataBundle]],
                 cohort: Cohort, normalizer: Normalizer, device: torch.device, weights_file: Path,
                 roles: Optional[dict[str, str]] = None):
        self.run_dir = Path(run_dir)
        self.record = record
        self.config = config  # the RunConfig of config.yaml
        self._data = data if isinstance(data, DataBundle) else None
        self._load_data = None if isinstance(data, DataBundle) else data
        self.cohort = cohort
        self.normalizer = normalizer
        self.device = device
        self.weights_file = weights_file
        self.roles = dict(roles or {})

    def __iter__(self) -> Iterator[Any]:
        return iter((self.config, self.data, self))

    @property
    def data(self) -> DataBundle:
        """The training dataset (splits read from the source with the recorded settings), read on first use."""
        if self._data is None:
            self._data = self._load_data()
        return self._data

    @property
    def has_data(self) -> bool:
        """Whether the training data can be read here (False for data that was given from Python)."""
        return self._data is not None or self.record.get("data", {}).get("source") != PYTHON_SOURCE

    @property
    def pipeline(self):
        """What the run's input pipeline does to a raw input (``peerlearn.data.preprocess.InputPipeline``)."""
        from peerlearn.data.preprocess import InputPipeline

        return InputPipeline.from_record(self.record["data"])

    @property
    def description(self) -> DataBundle:
        """The recorded inputs as a ``DataBundle`` with empty splits (shape, dtype, statistics, classes): what
        describing the run's inputs needs (e.g. export's JSON), without reading any data."""
        recorded, pipeline = self.record["data"], self.pipeline
        dtype = torch.uint8 if pipeline.dtype == "uint8" else torch.float32
        empty = Split(torch.zeros((0, *pipeline.shape), dtype=dtype), torch.zeros(0, dtype=torch.int64))
        return DataBundle(recorded.get("source", "?"), empty, empty, empty, self.class_names,
                          mean=list(recorded["normalization"]["mean"]), std=list(recorded["normalization"]["std"]),
                          value_range=pipeline.value_range, feature_names=pipeline.feature_names)

    @property
    def class_names(self) -> list[str]:
        recorded = self.record.get("data", {}).get("class_names")
        return list(recorded) if recorded is not None else list(self.data.class_names)

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
        """The named members (when None: every participant that gives logits, ``cohort.evaluable``; a
        multi-branch network's own row is its branches', an auxiliary module without predictions has none);
        an unknown name, or one that gives no logits, is an error listing the run's members."""
        names, evaluable = self.cohort.names, self.cohort.evaluable
        unknown = [m for m in members or [] if m not in names]
        if unknown:
            raise ConfigError(f"The run has no member {unknown[0]!r}; its members: {', '.join(names)}.")
        silent = [m for m in members or [] if m not in evaluable]
        if silent:
            raise ConfigError(f"{silent[0]!r} gives no logits of its own (a multi-branch network or an auxiliary "
                              f"module without predictions); choose among: {', '.join(evaluable)}.")
        return list(members or evaluable)

    def predict(self, inputs: Any, member: Optional[str] = None, batch_size: Optional[int] = None,
                device: Union[str, torch.device, None] = None, progress: Any = "off") -> torch.Tensor:
        """Class probabilities [N, C] of ``inputs`` (tensors, numpy arrays, PIL images, image files or a Dataset),
        after the run's preprocessing: the ensemble's by default, or member ``member``'s
        (``peerlearn.predict.predict``)."""
        from peerlearn.predict import predict

        return predict(self, inputs, member=member, batch_size=batch_size, device=device, progress=progress)

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
    """Reads ``run_dir`` from what it recorded about itself. ``read()`` gives a ``LoadedRun``.

    ``trust_code``: import the code the run names although it is not signed with this user's key."""

    def __init__(self, run_dir: Union[str, Path], device: str = "cpu", members: Optional[dict[str, nn.Module]] = None,
                 trust_code: bool = False):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.members = dict(members or {})  # networks given from Python (modules the run cannot rebuild itself)
        self.trust_code = trust_code
        self.records: Optional[RunRecords] = None  # the recorded hashes, read by ``read``
        if not (self.run_dir / CONFIG_NAME).is_file():
            raise PeerlearnError(f"{str(self.run_dir)!r} is not a peerlearn run directory (no {CONFIG_NAME}).")

    def _check(self, name: str) -> None:
        """The file ``name`` must match its recorded hash (exit 2 otherwise)."""
        if self.records is None:
            self.records = read_records(self.run_dir)
        self.records.check(name)

    def record(self) -> dict[str, Any]:
        """run.json (checked: hash, format and shape), or the copy inside the checkpoint when run.json is missing."""
        path = self.run_dir / RUN_RECORD_NAME
        record: Any = None
        if path.is_file():
            self._check(RUN_RECORD_NAME)
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ConfigError(f"Cannot read {str(path)!r}: {error}; it is damaged. Restore a good copy of "
                                  "the run.") from None
            check_record(record, path)
            return record
        else:
            checkpoint = self.run_dir / CHECKPOINT_NAME
            if checkpoint.is_file():
                self._check(CHECKPOINT_NAME)
                state = _damaged_as_config_error(load_state, checkpoint)
                record = state.get("run") if isinstance(state, dict) else None
                path = checkpoint
        if record is None:
            raise PeerlearnError(f"The run {str(self.run_dir)!r} has no {RUN_RECORD_NAME} (it was made by an older "
                                 "peerlearn, or stopped before its first checkpoint); train it again to read it.")
        check_record(record, path)
        return record

    def weights(self, names: Sequence[str]) -> tuple[dict[str, dict[str, torch.Tensor]], Path]:
        """Each member's final weights: model.safetensors, else (an interrupted run) the last checkpoint's."""
        final = self.run_dir / WEIGHTS_NAME
        if final.is_file():
            self._check(WEIGHTS_NAME)
            return {name: _damaged_as_config_error(load_weights, final, name) for name in names}, final
        if self.records is not None and self.records.recorded(WEIGHTS_NAME):
            raise ConfigError(f"The run {str(self.run_dir)!r} recorded its final weights {WEIGHTS_NAME}, which are "
                              "gone; restore them (the last checkpoint may hold other weights).")
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if not checkpoint.is_file():
            raise PeerlearnError(f"The run {str(self.run_dir)!r} has neither {WEIGHTS_NAME} nor a checkpoint: "
                                 "nothing was trained yet.")
        self._check(CHECKPOINT_NAME)
        state = _damaged_as_config_error(load_state, checkpoint)
        members = state.get("members") if isinstance(state, dict) else None
        if not isinstance(members, dict) or not all(isinstance(members.get(n), dict)
                                                    and isinstance(members[n].get("model"), dict) for n in names):
            raise ConfigError(f"The checkpoint {str(checkpoint)!r} holds no weights of the members "
                              f"{', '.join(names)} that run.json names; restore a good copy of the run.")
        return {name: members[name]["model"] for name in names}, checkpoint

    def config(self, record: dict[str, Any]):
        """config.yaml, validated, without importing code: a model registered from Python is found again first
        (its recorded factory), and the run's recipe was looked up before (``recipe_of``). A recipe that could
        not be found here leaves its section out: reading a run needs none of the recipe's settings."""
        from peerlearn.config import load_config

        for member in record["members"]:  # a model registered from Python must be known to validate the config
            network = member.get("network") or {}
            for part in [network, *network.get("backbones", [])]:
                if part.get("kind") == "registry":
                    ensure_registered(part)
        try:
            return load_config(self.run_dir / CONFIG_NAME, [f"train.device={self.device}"], import_code=False)
        except ConfigError as error:
            raise ConfigError(f"The run's {str(self.run_dir / CONFIG_NAME)!r} cannot be used: {error}") from None

    def data(self, record: dict[str, Any], config) -> DataBundle:
        """The dataset read from its source with the recorded settings; the recorded statistics and classes."""
        from pydantic import ValidationError

        from peerlearn.data.prepare import load_data

        recorded = record["data"]
        if recorded.get("source") == PYTHON_SOURCE:
            raise DataError(f"The run {str(self.run_dir)!r} was trained on data given from Python (peerlearn.UserData), "
                            "which is not stored with it. Prediction needs none of it (run.predict(...), peerlearn "
                            "predict RUN_DIR INPUT); to score the run, give labelled data: peerlearn evaluate RUN_DIR "
                            "--data PATH (an image folder or a CSV file), or evaluate_run(RUN_DIR, data=(x, y)).")
        where = f"The run record {str(self.run_dir / RUN_RECORD_NAME)!r}"
        try:
            data_config = type(config.data).model_validate(recorded["config"])
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first.get("loc", ()))
            raise ConfigError(f"{where} is damaged: key 'data.config.{key}': {first.get('msg')}. Restore a good "
                              "copy of the run.") from None
        data = load_data(data_config, seed=recorded["seed"])
        sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
        if recorded.get("sizes", sizes) != sizes:
            raise DataError(f"The dataset {recorded['source']!r} read now has splits of {sizes} items, but the run "
                                 f"{str(self.run_dir)!r} was trained and scored on {recorded['sizes']}: its files "
                                 "changed since; evaluate with the dataset the run was trained on.")
        normalization = recorded["normalization"]
        if len(normalization["mean"]) != len(data.mean):
            raise ConfigError(f"{where} is damaged: key 'data.normalization.mean' holds {len(normalization['mean'])} "
                              f"numbers, but the dataset has {len(data.mean)} channels or features. Restore a good "
                              "copy of the run.")
        if len(recorded["class_names"]) != data.num_classes:
            raise ConfigError(f"{where} is damaged: key 'data.class_names' names {len(recorded['class_names'])} "
                              f"classes, but the dataset has {data.num_classes}. Restore a good copy of the run.")
        data.mean, data.std = list(normalization["mean"]), list(normalization["std"])
        data.class_names = list(recorded["class_names"])
        return data

    def cohort(self, record: dict[str, Any], recipe=None) -> tuple[Cohort, Path]:
        """The run's participants with their final weights, in eval mode: member networks (rebuilt from their
        recorded networks, or the modules given from Python), auxiliary modules (rebuilt by the run's recipe from
        their recorded spec, with their predictors when they give logits) and views (a shared-trunk branch,
        taken from its owner)."""
        from peerlearn.recipes.base import Recipe

        rows = record["members"]
        names = [m["name"] for m in rows]
        unknown = sorted(set(self.members) - set(names))
        if unknown:
            raise ConfigError(f"The run {str(self.run_dir)!r} has no member {unknown[0]!r}; its members: "
                              f"{', '.join(names)}.")
        saved = [m["name"] for m in rows if "view" not in m]
        states, source = self.weights(saved)
        owner_class = recipe or Recipe
        members, modules = [], {}
        for entry in rows:
            if "view" in entry:
                continue
            try:
                if entry.get("role") == "auxiliary":
                    if recipe is None:
                        raise PeerlearnError(f"The run's auxiliary module {entry['name']!r} is rebuilt by its recipe "
                                             f"{record.get('recipe')!r}, which cannot be found here.")
                    model = recipe.build_auxiliary(entry["name"], entry.get("module", {}))
                elif entry["name"] in self.members:
                    model = self.given_network(entry["name"])
                else:
                    model = build_network(entry["network"])
            except (TypeError, ValueError, KeyError) as error:  # recorded arguments the builder does not take
                raise ConfigError(f"The recorded network of member {entry['name']!r} in "
                                  f"{str(self.run_dir / RUN_RECORD_NAME)!r} cannot be built: {error}. Restore a "
                                  "good copy of the run.") from None
            try:
                model.load_state_dict(states[entry["name"]])
            except RuntimeError as error:
                raise ConfigError(f"The weights of member {entry['name']!r} in {str(source)!r} do not fit its "
                                  f"recorded network: {str(error).strip().splitlines()[0]}. Restore a good copy of "
                                  "the run.") from None
            model.to(self.device).eval()
            modules[entry["name"]] = model
            kind = "auxiliary" if entry.get("role") == "auxiliary" else "network"
            member = Member(entry["name"], model, trainable=entry["role"] == "student", kind=kind,
                            info={"role": entry["role"], "network": entry.get("network")
                                  or _auxiliary_network(entry.get("module", {}))})
            if (entry.get("network") or {}).get("kind") == "multibranch":
                member.predictor = None  # its forward gives every branch's outputs: its views are what predicts
            members.append(member)
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

    def given_network(self, name: str) -> nn.Module:
        """A member's network given from Python, wrapped as training wrapped it (weights under ``network.``)."""
        from peerlearn.models.base import PeerModel
        from peerlearn.models.user import HookedModel

        network = self.members[name]
        if not isinstance(network, nn.Module):
            raise ConfigError(f"members[{name!r}] is a {type(network).__name__}; give the torch.nn.Module the run "
                              "trained (its weights are loaded from the run).")
        return network if isinstance(network, PeerModel) else HookedModel(network)
    def _check_agreement(self, record: dict[str, Any], config) -> None:
        """config.yaml and run.json describe the same run: the same recipe and member names."""
        recorded = [m["name"] for m in record["members"] if "network" in m]  # auxiliaries and views are the recipe's
        configured = [m.name for m in config.members]
        if config.recipe != record["recipe"] or not set(recorded) <= set(configured):
            raise ConfigError(f"The run's {str(self.run_dir / CONFIG_NAME)!r} and "
                              f"{str(self.run_dir / RUN_RECORD_NAME)!r} describe different runs (recipe {config.recipe!r} with members "
                              f"{', '.join(configured)} against recipe {record['recipe']!r} with members "
                              f"{', '.join(recorded)}); one of them was replaced. Restore a good copy of the run.")

    def trusted(self) -> bool:
        """Whether the run's code may be imported: ``trust_code``/``--trust-code``, or signed with this user's key."""
        if self.records is None:
            self.records = read_records(self.run_dir)
        return self.trust_code or self.records.signed

    def read(self, command: Optional[str] = None) -> LoadedRun:
        """The run, read for ``command`` (e.g. "probe": refused unless the run's recipe lists it in
        ``Recipe.commands``; None: any use)."""
        from peerlearn.config.loading import read_config_file

        self.records = read_records(self.run_dir)
        self._check(CONFIG_NAME)
        record = self.record()
        trusted = self.trusted()
        with trusting_code(self.trust_code), reading(trusted, f"the run {str(self.run_dir)!r}", self.run_dir):
            try:
                tree = read_config_file(self.run_dir / CONFIG_NAME)
            except ConfigError as error:
                raise ConfigError(f"The run's {str(self.run_dir / CONFIG_NAME)!r} cannot be used: {error}") from None
            references = record_references(record) + [(ref, f"config.yaml {key}")
                                                      for ref, key in config_references(tree)]
            require_trusted_references(references)  # all of them, before anything is imported
            recipe = recipe_of(record)
            if command is not None:
                check_command(record, recipe, command, self.run_dir)
            config = self.config(record)
            self._check_agreement(record, config)
            cohort, source = self.cohort(record, recipe)
        recorded = record["data"]
        normalizer = Normalizer(list(recorded["normalization"]["mean"]), list(recorded["normalization"]["std"]),
                                self.device, recorded["input"]["kind"] == "image")
        return LoadedRun(self.run_dir, record, config, lambda: self.data(record, config), cohort, normalizer,
                         self.device, source, roles={m["name"]: m["role"] for m in record["members"]})


def _damaged_as_config_error(read, *args):
    """``read(*args)`` of a run's weights file; a file that cannot be read (damaged, though it matches its
    recorded hash: accepted with ``peerlearn trust``) is exit 2, like any damaged run file."""
    try:
        return read(*args)
    except ConfigError:
        raise
    except PeerlearnError as error:
        raise ConfigError(f"{error} Restore a good copy of the run.") from None


def read_run(run_dir: Union[str, Path], device: str = "cpu", command: Optional[str] = None,
             members: Optional[dict[str, nn.Module]] = None, trust_code: bool = False) -> LoadedRun:
    """``RunReader(run_dir, device, members, trust_code).read(command)``."""
    loaded = RunReader(run_dir, device, members, trust_code).read(command)
    startup_gc.settle()  # the run is read back: collect again (a no-op unless the command line paused it)
    return loaded
