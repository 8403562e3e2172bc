"""Members and data given to ``peerlearn.train`` as Python objects, merged into the run's config.

``members={"a": module_or_factory_or_name, "b": (factory, {"width": 32}), ...}``: a member whose name
is in the config keeps its options there (optimizer, ``trainable``, ``weights``, ``features_from``, ...)
and gets this network; a new name is appended with the top-level options. A factory's arguments are
given with it as a pair; the config's ``model_args`` of a replaced zoo model (e.g. ``small_cnn``'s
width) are dropped, as they belong to that model. When the config lists no members itself (the default
cohort), the cohort is exactly the given members, in the given order.

The config records how to rebuild each network: a factory as ``package.module:callable`` with
``model_args``; a module as ``package.module:Class`` when ``Class()`` rebuilds it, else as
``python-object:...``, which only Python can load again (see ``peerlearn.models.user``).
``data=UserData(...)`` sets ``data.source: python``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torch import nn

from peerlearn.config import RunConfig, load_config
from peerlearn.data.user import PYTHON_SOURCE, UserData
from peerlearn.errors import ConfigError
from peerlearn.models.user import PYTHON_OBJECT_PREFIX, describe_factory, is_reference


@dataclass
class UserInputs:
    """The Python objects of a run: networks by member name, and the data."""

    members: dict[str, Any] = field(default_factory=dict)
    data: Optional[UserData] = None

    def __bool__(self) -> bool:
        return bool(self.members) or self.data is not None


def placeholder_name(source: Any) -> str:
    """The model name a Python member has until its recipe builds it and records the final one."""
    if isinstance(source, nn.Module):
        cls = type(source)
        return f"{PYTHON_OBJECT_PREFIX}{cls.__module__}:{cls.__qualname__}"
    if callable(source):
        return describe_factory(source)
    raise ConfigError(f"A member given to peerlearn.train is a {type(source).__name__}; give a torch.nn.Module, a "
                      "function that returns one, or a model name.")


def split_arguments(name: str, source: Any) -> tuple[Any, Optional[dict]]:
    """``(factory, {"width": 32})`` -> (factory, its model_args); anything else -> (it, None)."""
    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[1], Mapping) or isinstance(source[0], nn.Module):
            raise ConfigError(f"The member {name!r} is a tuple; give (factory, {{keyword arguments}}), e.g. "
                              "(make_net, {'width': 32}).")
        return source[0], dict(source[1])
    return source, None


def merge_user_inputs(config: RunConfig, explicit_members: bool, members: Optional[Mapping[str, Any]],
                      data: Optional[UserData], features_from: Optional[Mapping[str, str]] = None
                      ) -> tuple[RunConfig, UserInputs]:
    """The config with the given members and data written in, and the objects the recipe builds from."""
    inputs = UserInputs()
    overrides: dict[str, Any] = {}
    if members:
        if not isinstance(members, Mapping):
            raise ConfigError("peerlearn.train(members=...) takes a mapping of member names to networks, e.g. "
                              "members={'a': net_a, 'b': make_net}.")
        cohort = [m.model_dump(mode="json") for m in config.members] if explicit_members else []
        by_name = {entry["name"]: entry for entry in cohort}
        for name, source in members.items():
            entry = by_name.get(name)
            if entry is None:
                entry = {"name": name}
                cohort.append(entry)
            source, args = split_arguments(name, source)
            if args is not None:
                entry["model_args"] = args
            elif not is_reference(entry.get("model", "")):
                entry.pop("model_args", None)  # a replaced zoo model's options
            if isinstance(source, str):
                entry["model"] = source
            else:
                entry["model"] = placeholder_name(source)
                inputs.members[name] = source
        for name, where in (features_from or {}).items():
            if name not in {entry["name"] for entry in cohort}:
                raise ConfigError(f"peerlearn.train(features_from=...) names the member {name!r}, which the cohort "
                                  "does not have.")
            next(e for e in cohort if e["name"] == name)["features_from"] = where
        overrides["members"] = cohort
    elif features_from:
        overrides.update({f"members.{i}.features_from": features_from[m.name]
                          for i, m in enumerate(config.members) if m.name in features_from})
    if data is not None:
        if not isinstance(data, UserData):
            raise ConfigError(f"peerlearn.train(data=...) takes a peerlearn.UserData, not a {type(data).__name__}: "
                              "wrap Datasets or tensors as UserData(train=..., val=..., test=...).")
        overrides["data.source"] = PYTHON_SOURCE
        overrides["data.options"] = {}
        inputs.data = data
    if overrides:
        config = load_config(config, overrides)
    return config, inputs


def for_resume(config: RunConfig, members: Optional[Mapping[str, Any]], data: Optional[UserData]) -> UserInputs:
    """The objects passed again to resume a run (only members the run has; its config is kept)."""
    names = {m.name for m in config.members}
    unknown = sorted(set(members or {}) - names)
    if unknown:
        raise ConfigError(f"Cannot resume with members {', '.join(unknown)}: the run's members are {', '.join(names)}.")
    return UserInputs({k: v for k, v in (members or {}).items() if not isinstance(v, str)}, data)
