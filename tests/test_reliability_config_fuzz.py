"""Every malformed config ends in exit code 2 with a one-line message naming the offending key, never a
traceback and never a run directory.

The cases are derived from the schema itself: ``schema_fields`` walks ``RunConfig.model_fields`` and the
recipes' sections recursively (sections, optional sections, lists and dicts of sections) and ``bad_values``
gives, for each field's type, values that type must refuse: booleans and strings where numbers are expected,
non-finite and overflowing numbers, numbers where flags or names are expected, non-mappings where a
section is expected. A key added to the schema is fuzzed without editing this file. File-level cases
(non-mappings at the top, encodings, binary files, alias bombs, deep nesting, oversized files) and
cross-key rules (empty or all-frozen cohorts, models that do not fit the data, override syntax) follow.
Most cases run through ``cli.main`` in process (fast); a few through a real ``python -m peerlearn``.
"""

from __future__ import annotations

import copy
import tempfile
import time
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from conftest import run_cli, tiny_config
from peerlearn.cli import main
from peerlearn.config import RECIPE_SECTIONS, SECTION_READERS, RunConfig, load_config
from peerlearn.errors import ConfigError

BASE = tiny_config(train={"epochs": 1})
MISSING = object()


def _unwrap(annotation: Any) -> Any:
    """``Optional[X]`` / ``Annotated[X, ...]`` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _minimal(section: type[BaseModel]) -> dict:
    """The smallest valid mapping of a section: its required string fields filled in."""
    return {name: "x" for name, field in section.model_fields.items() if field.is_required()}


def schema_fields(model: type[BaseModel] = RunConfig, prefix: str = "", scaffold: tuple = ()) -> list[tuple]:
    """(dotted key, annotation, scaffold) for every field of the schema, depth first. ``scaffold`` lists
    the (key, value) pairs that must exist before the field can be set (e.g. a list item of a section)."""
    found = []
    fields = [(name, field.annotation, scaffold) for name, field in model.model_fields.items()]
    if model is RunConfig:  # the recipes' sections, declared in their modules: each in a config of its recipe
        fields += [(name, section, scaffold + (("recipe", SECTION_READERS[name][0]),))
                   for name, section in RECIPE_SECTIONS.items()]
    for name, declared, scaffold in fields:
        key = f"{prefix}{name}"
        annotation = _unwrap(declared)
        found.append((key, declared, scaffold))
        if _is_section(annotation):
            found += schema_fields(annotation, f"{key}.", scaffold)
        elif get_origin(annotation) is list and _is_section(_unwrap(get_args(annotation)[0])):
            item = _unwrap(get_args(annotation)[0])
            if key == "members":  # the base config has members already
                found += schema_fields(item, f"{key}.0.", scaffold)
            else:
                found += schema_fields(item, f"{key}.0.", scaffold + ((key, [_minimal(item)]),))
        elif get_origin(annotation) is dict and _is_section(_unwrap(get_args(annotation)[1])):
            item = _unwrap(get_args(annotation)[1])
            found += schema_fields(item, f"{key}.0.", scaffold + ((key, {0: _minimal(item)}),))
    return found


def bad_values(annotation: Any) -> list:
    """Values that a field typed ``annotation`` must refuse (strict types, finite numbers)."""
    inner = _unwrap(annotation)
    origin = get_origin(inner)
    if _is_section(inner):
        return [[], 0, "text", True]
    if inner is bool:
        return [1, "yes", "true", 0.5, [True]]
    if inner is int:
        return [True, "7", 1.5, [1], {"a": 1}, 2**70, float("inf")]
    if inner is float:
        return [True, "0.5", float("inf"), float("-inf"), float("nan"), 1e39, -1e39, [0.5]]
    if inner is str:
        return [5, True, [1], {"a": 1}]
    if origin is Literal:
        return ["zz-not-a-choice", 3, True]
    if origin in (list, tuple):
        return ["text", 5, {"a": 1}]
    if origin is dict:
        return ["text", [1, 2], 5]
    return []  # Any: free-form


FIELD_CASES = [(key, value, scaffold) for key, annotation, scaffold in schema_fields()
               for value in bad_values(annotation)]


def set_key(tree: dict, key: str, value) -> None:
    node: Any = tree
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part.isdigit() and int(part) in node:
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif last.isdigit() and int(last) in node:
        node[int(last)] = value
    else:
        node[last] = value


def _train_text(text: bytes, overrides: list[str], capsys) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(text)
        out = Path(folder) / "runs"
        code = main(["train", str(path), *overrides, "--out", str(out)])
        assert not out.exists(), "something was written for a bad config"
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    for needle in needles:
        assert needle in err, f"the message does not name {needle!r}: {err}"
    assert "Traceback" not in err and err.count("\n") <= 2  # one message, not a dump


def test_the_schema_walk_reaches_every_section():
    keys = {key for key, _, _ in schema_fields()}
    for key in ("train.epochs", "optim.betas", "members.0.max_norm", "data.augment.flip", "engine.dist_timeout",
                "distill.transfer_data.image_size", "transfer.backbones.0.input_size", "greedy.stages.0.epochs",
                "regularize.early_stopping.patience", "transfer.source_data.train_subset"):
        assert key in keys
    assert len(FIELD_CASES) > 500


@pytest.mark.parametrize("key, value, scaffold", FIELD_CASES,
                         ids=[f"{key}={value!r}"[:60] for key, value, _ in FIELD_CASES])
def test_every_key_refuses_values_of_the_wrong_type(key, value, scaffold):
    tree = copy.deepcopy(BASE)
    for where, content in scaffold:
        set_key(tree, where, copy.deepcopy(content))
    set_key(tree, key, value)
    with pytest.raises(ConfigError) as refused:  # what `peerlearn train` prints, with exit code 2
        load_config(tree)
    _assert_refused(refused.value.exit_code, f"peerlearn train: {refused.value}\n", key)


@pytest.mark.parametrize("key, value, scaffold", FIELD_CASES[::25])
def test_a_sample_of_them_through_the_command_line(key, value, scaffold, capsys):
    tree = copy.deepcopy(BASE)
    for where, content in scaffold:
        set_key(tree, where, copy.deepcopy(content))
    set_key(tree, key, value)
    code, err = _train_text(yaml.safe_dump(tree).encode(), [], capsys)
    _assert_refused(code, err, key)


# --------------------------------------------------------------------------- the file itself
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


@pytest.mark.parametrize("text, needle", [
    (b"[]\n", "mapping"), (b"0\n", "mapping"), (b"false\n", "mapping"), (b"", "empty"), (b"# nothing\n", "empty"),
    (b"- train\n- optim\n", "mapping"), (b"'text'\n", "mapping"), (b"1: 2\n", "not a name"),
    ("train: {epochs: 1}\nname: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    ("train: {epochs: 1}\n".encode("utf-16"), "binary"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"train:\n  epochs: 1\n" + b"#" * (1 << 20) + b"\n", "at most 1048576"),
    (BOMB.encode(), "alias"),
    (b"a: &a [*a]\n", "recursive"),
    (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "deeper than"),
    (b"x: " + b"{a: " * 100 + b"1" + b"}" * 100 + b"\n", "deeper than"),
])
def test_malformed_files_are_refused_in_bounded_time(text, needle, capsys):
    started = time.perf_counter()
    code, err = _train_text(text, [], capsys)
    _assert_refused(code, err, needle, "config.yaml")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("overrides, key", [
    (["optim.lr=.inf"], "optim.lr"), (["optim.lr=1e39"], "optim.lr"), (["train.epochs=true"], "train.epochs"),
    (["data.normalize=1"], "data.normalize"), (["seed=-1"], "seed"), (["members=[]"], "members"),
])
def test_bad_override_values_name_the_key(overrides, key, capsys):
    code, err = _train_text(yaml.safe_dump(BASE).encode(), overrides, capsys)
    _assert_refused(code, err, key)


# --------------------------------------------------------------------------- rules across keys, syntax
@pytest.mark.parametrize("sections, overrides, key", [
    ({"members": []}, [], "members"),
    ({"members": [{"name": "a", "trainable": False}]}, [], "trainable"),
    ({"members": [{"name": "a", "model": "small_cnn", "model_args": {"in_channels": 3}}]}, [], "members.0"),
    ({"members": [{"name": "a", "model": "mlp", "model_args": {"zz_option": 1}}]}, [], "members.0"),
    ({"members": [{"name": "a"}, {"name": "a"}]}, [], "members"),
    ({}, ["optim.lr"], "optim.lr"),
    ({}, ["optim..lr=0.1"], "optim..lr=0.1"),
    ({}, ["members.9.model=mlp"], "members.9.model"),
    ({}, ["optim.lr.x=1"], "optim.lr"),
    ({}, ["optim.lr=[1,"], "optim.lr"),
    ({}, ["train.zz=1"], "train.zz"),
    ({"mutual": {"weight": 5}}, [], "mutual"),  # another recipe's section (the recipe is independent)
    ({"recipe": "distill", "greedy": {}}, [], "greedy"),
    ({}, ["recipe=no_such_pkg.mod:Recipe"], "recipe"),
])
def test_cross_key_rules_and_override_syntax(sections, overrides, key, capsys):
    code, err = _train_text(yaml.safe_dump(tiny_config(**sections)).encode(), overrides, capsys)
    _assert_refused(code, err, key)


@pytest.mark.parametrize("text, overrides, needle", [
    (b"[]\n", [], "mapping"),
    (yaml.safe_dump(tiny_config(train={"epochs": True})).encode(), [], "train.epochs"),
    (yaml.safe_dump(tiny_config()).encode(), ["optim.lr=.inf"], "optim.lr"),
])
def test_malformed_configs_in_a_real_process(tmp_path, text, overrides, needle):
    config = tmp_path / "bad.yaml"
    config.write_bytes(text)
    done = run_cli("train", str(config), *overrides, "--out", str(tmp_path / "runs"))
    assert done.returncode == 2 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()
