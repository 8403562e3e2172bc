"""Fuzzed configs: every malformed config or override ends in exit code 2 with a message naming the
offending key, never a traceback and never a run directory. Most cases go through ``cli.main`` in
process (fast); a few through a real ``python -m peerlearn`` subprocess."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli, tiny_config
from peerlearn.cli import main

BASE = tiny_config(train={"epochs": 1})

# leaves of the tree, by the kind of value they hold
NUMBERS = ["seed", "data.batch_size", "data.eval_batch_size", "data.val_fraction", "optim.lr", "optim.momentum",
           "optim.weight_decay", "schedule.gamma", "train.epochs", "train.eval_every", "train.checkpoint_every_steps",
           "train.threads", "mutual.weight", "mutual.temperature", "data.augment.crop_padding"]
FLAGS = ["data.augment.flip", "data.normalize", "train.deterministic", "tracking.tensorboard", "optim.nesterov",
         "members.1.trainable"]
CHOICES = ["optim.name", "schedule.name", "mutual.divergence", "mutual.update", "train.progress", "recipe",
           "data.source", "members.0.model", "train.device"]
SIZES = {  # key: the largest invalid value (gt 0 -> 0, ge 0 -> -1)
    "data.batch_size": 0, "data.eval_batch_size": 0, "train.epochs": 0, "train.eval_every": 0,
    "train.checkpoint_every_steps": 0, "train.threads": 0, "data.train_subset": 0, "data.image_size": 0,
    "data.augment.crop_padding": -1, "data.augment.jitter": -1, "seed": -1, "schedule.step_size": 0,
    "optim.lr": 0, "mutual.temperature": 0, "mutual.weight": -1, "optim.weight_decay": -1,
}
SECTIONS = ["", "data", "data.augment", "optim", "schedule", "train", "mutual", "tracking", "members.0", "members.1"]
BOOL_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "t", "f", "1", "0"}

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
non_numbers = st.one_of(words.filter(lambda w: w not in BOOL_WORDS), st.lists(st.integers(), min_size=1, max_size=3),
                        st.dictionaries(words, st.integers(), min_size=1, max_size=2))
non_strings = st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(words, min_size=1, max_size=2),
                        st.dictionaries(words, words, min_size=1, max_size=2))


def set_key(tree: dict, key: str, value) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


@st.composite
def malformed(draw):
    """(config tree, overrides, a string the error message must contain)."""
    tree = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["type", "flag", "choice", "unknown", "size", "empty", "frozen", "mismatch",
                                 "override"]))
    if kind == "type":
        key = draw(st.sampled_from(NUMBERS))
        set_key(tree, key, draw(non_numbers))
        return tree, [], key
    if kind == "flag":
        key = draw(st.sampled_from(FLAGS))
        set_key(tree, key, draw(st.one_of(st.lists(st.booleans(), min_size=1), st.integers(2, 99),
                                          words.filter(lambda w: w not in BOOL_WORDS))))
        return tree, [], key
    if kind == "choice":
        key = draw(st.sampled_from(CHOICES))
        set_key(tree, key, draw(st.one_of(non_strings, words.map(lambda w: "zz" + w))))
        return tree, [], key
    if kind == "unknown":
        section = draw(st.sampled_from(SECTIONS))
        name = "zz_" + draw(words)
        key = f"{section}.{name}" if section else name
        set_key(tree, key, draw(st.integers()))
        return tree, [], key
    if kind == "size":
        key = draw(st.sampled_from(sorted(SIZES)))
        set_key(tree, key, draw(st.integers(min_value=-10**6, max_value=SIZES[key])))
        return tree, [], key
    if kind == "empty":
        tree["members"] = []
        return tree, [], "members"
    if kind == "frozen":
        for member in tree["members"]:
            member["trainable"] = False
        return tree, [], "members"
    if kind == "mismatch":  # members that do not fit the dataset (digits: 1 channel, 8x8, 10 classes)
        index = draw(st.integers(0, 1))
        arg = draw(st.sampled_from([{"in_channels": 3}, {"num_classes": 100}, {"width": -4}, {"in_features": 5},
                                    {"zz_option": 1}]))
        if draw(st.booleans()):
            tree["members"][index] = {"name": f"m{index}", "model": "mlp", "model_args": arg}
        else:
            tree["members"][index]["model_args"] = {**tree["members"][index]["model_args"], **arg}
        return tree, [], f"members.{index}"
    # bad override syntax
    case = draw(st.sampled_from(["no_equals", "empty_part", "index", "scalar", "yaml", "unknown"]))
    if case == "no_equals":
        text = draw(words)
        return tree, [f"optim.{text}"], f"optim.{text}"
    if case == "empty_part":
        text = draw(st.sampled_from(["optim..lr=0.1", ".lr=1", "=3", "train.=2", "a..b.c=x"]))
        return tree, [text], text
    if case == "index":
        index = draw(st.integers(2, 50))
        return tree, [f"members.{index}.model=mlp"], f"members.{index}.model"
    if case == "scalar":
        return tree, [f"optim.lr.{draw(words)}=1"], "optim.lr"
    if case == "yaml":
        value = draw(st.sampled_from(["[1,", "{a: ", '"open', "[[]"]))
        return tree, [f"optim.lr={value}"], "optim.lr"
    name = "zz" + draw(words)
    return tree, [f"train.{name}=1"], f"train.{name}"


def _train_in_process(tree: dict, overrides: list[str], capsys) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        out = Path(folder) / "runs"
        code = main(["train", str(path), *overrides, "--out", str(out)])
        assert not (out.is_dir() and any(out.iterdir())), "a run directory was made for a bad config"
    return code, capsys.readouterr().err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=malformed())
def test_malformed_configs_exit_2_naming_the_key(case, capsys):
    tree, overrides, key = case
    code, err = _train_in_process(tree, overrides, capsys)
    assert code == 2, err
    assert key in err, f"the message does not name {key!r}: {err}"
    assert "Traceback" not in err and err.count("\n") <= 2  # one message, not a dump


@pytest.mark.parametrize("sections, overrides, key", [
    ({"data": {"source": "digits", "batch_size": "many"}}, [], "data.batch_size"),
    ({"train": {"epochs": 1, "zz_speed": 3}}, [], "train.zz_speed"),
    ({"members": []}, [], "members"),
    ({"members": [{"name": "a", "model": "small_cnn", "model_args": {"in_channels": 3}}]}, [], "members.0"),
    ({}, ["members.9.model=mlp"], "members.9.model"),
    ({}, ["optim.lr"], "optim.lr"),
])
def test_malformed_configs_in_a_real_process(tmp_path, sections, overrides, key):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny_config(**sections)))
    done = run_cli("train", str(config), *overrides, "--out", str(tmp_path / "runs"))
    assert done.returncode == 2 and key in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "runs").glob("*"))
