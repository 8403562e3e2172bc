"""The shape of what a run directory holds, checked before it is used: ``run.json`` and ``summary.json``.

Their hashes (``peerlearn.trust``) prove that the files are the ones the run wrote, or that the user accepted
them with ``peerlearn trust``; these checks make sure that even an accepted file of the wrong shape (a list
where members are expected, a NaN normalisation mean, a zero std, class names that do not match the number
of classes, an unknown format) ends in a message naming the file and the key, exit 2, never a traceback or a
silently different result.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from peerlearn.engine.run_record import RECORD_FORMAT, ROLES
from peerlearn.errors import ConfigError

NETWORK_KINDS = ("registry", "timm", "transfer", "multibranch")
MEMBER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class _Damaged(Exception):
    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(key)
        self.key, self.value, self.expected = key, value, expected


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _need(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise _Damaged(key, value, expected)


def _mapping(tree: dict, key: str, where: str, optional: bool = False) -> Any:
    value = tree.get(key)
    if optional and value is None:
        return None
    _need(isinstance(value, dict), f"{where}{key}", value, "a mapping")
    return value


def _text(tree: dict, key: str, where: str, optional: bool = False) -> Any:
    value = tree.get(key)
    if optional and value is None:
        return None
    _need(isinstance(value, str) and value != "", f"{where}{key}", value, "a non-empty string")
    return value


def _numbers(value: Any, key: str, positive: bool = False) -> list:
    _need(isinstance(value, list) and len(value) > 0 and all(_is_number(v) for v in value), key, value,
          "a non-empty list of finite numbers")
    if positive:
        _need(all(v > 0 for v in value), key, value, "numbers above 0")
    return value


def _network(network: Any, key: str, depth: int = 0) -> None:
    _need(isinstance(network, dict), key, network, "a mapping describing a network")
    kind = network.get("kind")
    allowed = NETWORK_KINDS if depth == 0 else ("registry", "timm")
    _need(kind in allowed, f"{key}.kind", kind, f"one of {', '.join(allowed)}")
    where = f"{key}."
    if kind == "multibranch":  # a zoo network split into a shared trunk and K branches (models.multibranch)
        _text(network, "model", where)
        for name in ("model_args", "shape_args"):
            _mapping(network, name, where)
        _need(_is_int(network.get("branches")) and network["branches"] > 0, f"{where}branches",
              network.get("branches"), "a positive integer")
        return
    if kind == "registry":
        _text(network, "model", where)
        for name in ("model_args", "shape_args"):
            args = _mapping(network, name, where)
            _need(all(isinstance(k, str) for k in args), f"{where}{name}", args, "a mapping with string keys")
        _text(network, "factory", where, optional=True)
        _mapping(network, "attributes", where, optional=True)
        bias = network.get("class_bias")
        if bias is not None:
            _numbers(bias, f"{where}class_bias")
        _need(isinstance(network.get("drop_classifier", False), bool), f"{where}drop_classifier",
              network.get("drop_classifier"), "true or false")
    elif kind == "timm":
        _text(network, "name", where)
        _need(_is_int(network.get("in_chans")) and network["in_chans"] > 0, f"{where}in_chans",
              network.get("in_chans"), "a positive integer")
    else:
        backbones = network.get("backbones")
        _need(isinstance(backbones, list) and len(backbones) > 0, f"{where}backbones", backbones,
              "a non-empty list of networks")
        for index, backbone in enumerate(backbones):
            _network(backbone, f"{where}backbones.{index}", depth + 1)
        _need(_is_int(network.get("num_classes")) and network["num_classes"] > 0, f"{where}num_classes",
              network.get("num_classes"), "a positive integer")
        for name in ("input_sizes", "input_pads"):
            value = network.get(name)
            _need(isinstance(value, list) and len(value) == len(backbones)
                  and all(v is None or (_is_int(v) and v >= 0) for v in value), f"{where}{name}", value,
                  "a list of one size per backbone")
        background = network.get("background")
        _need(isinstance(background, list) and all(_is_number(v) for v in background), f"{where}background",
              background, "a list of finite numbers")
        dropout = network.get("dropout", 0.0)
        _need(_is_number(dropout) and 0 <= dropout < 1, f"{where}dropout", dropout, "a number in [0, 1)")


def _data(data: Any) -> None:
    _need(isinstance(data, dict), "data", data, "a mapping")
    _need(_is_int(data.get("seed")), "data.seed", data.get("seed"), "an integer")
    _mapping(data, "config", "data.")
    _text(data, "source", "data.")
    names = data.get("class_names")
    _need(isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names),
          "data.class_names", names, "a non-empty list of strings")
    classes = data.get("num_classes")
    _need(_is_int(classes) and classes == len(names), "data.num_classes", classes,
          f"the number of class names ({len(names)})")
    norm = _mapping(data, "normalization", "data.")
    mean = _numbers(norm.get("mean"), "data.normalization.mean")
    std = _numbers(norm.get("std"), "data.normalization.std", positive=True)
    _need(len(std) == len(mean), "data.normalization.std", std, f"{len(mean)} numbers, one per mean")
    scale = norm.get("scale", 1.0)
    _need(_is_number(scale) and scale > 0, "data.normalization.scale", scale, "a positive number")
    layout = _mapping(data, "input", "data.")
    _need(layout.get("kind") in ("image", "features"), "data.input.kind", layout.get("kind"), "image or features")
    sizes = data.get("sizes")
    if sizes is not None:
        _need(isinstance(sizes, dict) and all(_is_int(sizes.get(s)) and sizes[s] >= 0
                                              for s in ("train", "val", "test")),
              "data.sizes", sizes, "a mapping of train, val and test to item counts")


def _members(members: Any) -> list[str]:
    _need(isinstance(members, list) and len(members) > 0, "members", members, "a non-empty list of members")
    names: list[str] = []
    for index, member in enumerate(members):
        key = f"members.{index}"
        _need(isinstance(member, dict), key, member, "a mapping with name, role and network")
        name = member.get("name")
        _need(isinstance(name, str) and bool(MEMBER_NAME.match(name)) and name not in names, f"{key}.name", name,
              "a unique member name (letters, digits, _ and -)")
        names.append(name)
        role = member.get("role")
        if role == "auxiliary":  # a recipe's trainable part: rebuilt by its recipe from ``module``
            _mapping(member, "module", f"{key}.")
            _need(isinstance(member.get("predicts", False), bool), f"{key}.predicts", member.get("predicts"),
                  "true or false")
            continue
        if "view" in member:  # a branch of another member's network
            view = _mapping(member, "view", f"{key}.")
            _need(view.get("of") in names, f"{key}.view.of", view.get("of"),
                  "the name of a member listed before it")
            continue
        _need(role in ROLES, f"{key}.role", role, f"one of {', '.join(ROLES)}")
        _network(member.get("network"), f"{key}.network")
    return names


def check_record(record: Any, path: Path) -> None:
    """Refuse (exit 2) a run record that the reader cannot use as it is: an unknown ``format``, or a key of the
    wrong type or range (see docs/runs.md for the layout)."""
    if isinstance(record, dict) and (record.get("format") != RECORD_FORMAT or isinstance(record.get("format"), bool)):
        raise ConfigError(f"The run record {str(path)!r} has format {record.get('format')!r}; this peerlearn reads "
                          f"format {RECORD_FORMAT} only. Read the run with the peerlearn that wrote it.")
    try:
        _need(isinstance(record, dict), "(the whole file)", record, "a mapping")
        _text(record, "recipe", "")
        _text(record, "recipe_class", "", optional=True)
        _need(isinstance(record.get("finished", False), bool), "finished", record.get("finished"), "true or false")
        names = _members(record.get("members"))
        for key in ("ensemble", "evaluated"):
            value = record.get(key, [])
            _need(isinstance(value, list) and all(isinstance(n, str) and n in names for n in value), key, value,
                  f"a list of the run's member names ({', '.join(names)})")
        _data(record.get("data"))
        _mapping(record, "stage", "", optional=True)
    except _Damaged as damage:
        raise ConfigError(f"The run record {str(path)!r} is damaged: key {damage.key!r} has the value "
                          f"{_shown(damage.value)}; expected {damage.expected}. Restore a good copy of the run.") \
            from None


def check_summary(summary: Any, path: Path) -> None:
    """Refuse (exit 2) a summary.json whose scores the report cannot read: ``members`` maps each member to
    ``{split: {metric: number}}``, ``ensemble`` is such a ``{split: ...}`` mapping (or empty)."""
    try:
        _need(isinstance(summary, dict), "(the whole file)", summary, "a mapping")
        members = _mapping(summary, "members", "")
        entries = [(f"members.{name}", scores) for name, scores in members.items()]
        entries.append(("ensemble", summary.get("ensemble") or {}))
        for key, scores in entries:
            _need(isinstance(scores, dict) and all(isinstance(v, dict) for v in scores.values()), key, scores,
                  "a mapping of splits to scores")
            for split, values in scores.items():
                _need(all(v is None or _is_number(v) or isinstance(v, (list, dict, str)) for v in values.values()),
                      f"{key}.{split}", values, "scores that are numbers")
        for key in ("name", "recipe", "dataset"):
            _need(isinstance(summary.get(key, ""), str), key, summary.get(key), "a string")
        for key in ("epochs", "steps", "train_seconds"):
            value = summary.get(key, 0)
            _need(_is_number(value), key, value, "a number")
    except _Damaged as damage:
        raise ConfigError(f"The run summary {str(path)!r} is damaged: key {damage.key!r} has the value "
                          f"{_shown(damage.value)}; expected {damage.expected}. Restore a good copy of the run.") \
            from None
