"""Overrides in any order, list items set by index or appended, and `peerlearn config`."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli, tiny_config
from peerlearn.config import load_config
from peerlearn.config.loading import apply_override, parse_override
from peerlearn.errors import ConfigError


def _apply(tree, *texts):
    for text in texts:
        apply_override(tree, *parse_override(text))
    return tree


def test_index_one_past_the_end_appends_and_plus_appends():
    tree = _apply({"members": [{"name": "a"}, {"name": "b"}]}, "members.2.model=mlp", "members.+={name: d}",
                  "members.+.name=e")
    assert tree["members"] == [{"name": "a"}, {"name": "b"}, {"model": "mlp"}, {"name": "d"}, {"name": "e"}]


def test_a_number_under_a_mapping_of_the_schema_is_a_key_not_a_list_index(tmp_path):
    """greedy.stages maps stage numbers to settings: `greedy.stages.2.epochs=1` sets stage 2 of a config that
    names no stage (not item 2 of an empty list), and edits the stage a config file wrote with a number key."""
    config = load_config({"recipe": "greedy"}, ["greedy.stages.2.epochs=1", "greedy.stages.2.optim.lr=0.2"])
    assert config.greedy.stages[2].epochs == 1 and config.greedy.stages[2].optim == {"lr": 0.2}
    path = tmp_path / "g.yaml"
    path.write_text("recipe: greedy\ngreedy: {stages: {1: {epochs: 3}}}\n")
    edited = load_config(path, ["greedy.stages.1.epochs=1", "members.0.model_args.width=8"])
    assert {j: s.epochs for j, s in edited.greedy.stages.items()} == {1: 1}
    assert edited.members[0].model_args == {"width": 8}  # a free-form mapping under a list item


def test_absent_list_is_created_by_an_index():
    tree = _apply({}, "transfer.backbones.0.source=run_a", "transfer.backbones.1.source=run_b")
    assert tree == {"transfer": {"backbones": [{"source": "run_a"}, {"source": "run_b"}]}}
    assert _apply({}, "a.0=1", "a.+=2") == {"a": [1, 2]}


@pytest.mark.parametrize("text, words", [
    ("members.3.model=mlp", "below its length 2"),
    ("members.x.model=mlp", "not an index below"),
    ("optim.+=1", "appends to a list, but 'optim' is a mapping"),
])
def test_bad_list_overrides_are_config_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        _apply({"members": [{}, {}], "optim": {}}, text)


def test_overrides_validate_through_load_config():
    config = load_config(tiny_config(recipe="transfer"), ["members.2.model=mlp", "members.2.name=c",
                                         "members.+={name: d, model: mlp}", "transfer.backbones.0.source=x"])
    assert [m.name for m in config.members] == ["a", "b", "c", "d"]
    assert config.members[2].model == "mlp" and config.transfer.backbones[0].source == "x"


def test_config_command_prints_the_resolved_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    done = run_cli("config", "optim.lr=0.2", str(path), "members.+={name: c, model: mlp}")
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    expected = load_config(str(path), ["optim.lr=0.2", "members.+={name: c, model: mlp}"]).model_dump(mode="json")
    assert printed == expected and printed["optim"]["lr"] == 0.2 and printed["members"][2]["name"] == "c"
    bad = run_cli("config", str(path), "optim.lr=-1")
    assert bad.returncode == 2 and "optim.lr" in bad.stderr and "Traceback" not in bad.stderr


def test_train_takes_overrides_after_the_options(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    done = run_cli("train", str(path), "--out", str(tmp_path / "runs"), "train.epochs=1", "members.1.model=mlp",
                   "members.1.model_args={}")
    assert done.returncode == 0, done.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["members"][1]["model"] == "mlp"
    assert json.loads((run_dir / "summary.json").read_text())


def test_unknown_options_and_two_files_exit_2(tmp_path):
    assert run_cli("train", "a.yaml", "--bogus").returncode == 2
    done = run_cli("config", "a.yaml", "b.yaml")
    assert done.returncode == 2 and "one CONFIG file" in done.stderr
