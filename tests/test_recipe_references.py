"""Recipes by reference and the rules a recipe owns (issue 23, points 5 and 6).

* ``recipe: package.module:Class`` names a recipe written outside peerlearn: it trains from the CLI and from
  Python, is recorded in run.json and read back by the after-training commands in a new process; a
  reference that leads nowhere is exit 2 with the reason.
* A config holds its own recipe's section only; members left out are the recipe's (``Recipe.defaults``):
  every shipped recipe but transfer trains from a config of ``recipe``, ``data`` and ``train`` alone.
* ``--resume --change`` follows the fields' declarations (``Changeable``), in a recipe's own section too.
* Outside ``peerlearn/recipes`` no code spells a recipe's name.
"""

from __future__ import annotations

import ast
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

import peerlearn
import peerlearn.recipes as recipes
from conftest import REPO, run_cli
from peerlearn.cli import main
from peerlearn.config import RECIPE_SECTIONS, SECTION_READERS, load_config
from peerlearn.errors import ConfigError

# one package name per test session: the subprocesses and this process never share a stale module
PACKAGE = f"toy_recipes_{uuid.uuid4().hex[:8]}"

TOY = '''
from typing import Any

from pydantic import Field

from peerlearn.config import Changeable, Section
from peerlearn.recipes.mutual import IndependentRecipe


class ToySettings(Section):
    """The toy recipe's own section."""

    note_scale: float = Changeable(1.0, gt=0)  # may change when the run is resumed
    fixed_width: int = Field(16, gt=0)  # may not


class ToyRecipe(IndependentRecipe):
    """Independent training of one small mlp, with a section and defaults of its own: written outside peerlearn."""

    name = "toy"
    section, section_model = "toy", ToySettings

    @classmethod
    def defaults(cls, config) -> dict[str, Any]:
        return {"members": [{"name": "solo", "model": "mlp", "model_args": {"widths": [config.toy.fixed_width]}}]}

    def summary_extra(self) -> dict[str, Any]:
        return {**super().summary_extra(), "toy": self.config.toy.model_dump()}


class NotARecipe:
    pass
'''

TINY_TRAIN = {"epochs": 1, "progress": "off", "threads": 1}
TINY_DATA = {"source": "digits", "val_fraction": 0.2}


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    """A package of recipes outside peerlearn: ``toy`` (used in this process), ``guarded`` (the same code, never
    imported here), ``broken`` (fails while importing)."""
    root = tmp_path_factory.mktemp("user_code")
    package = root / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(TOY)
    (package / "guarded.py").write_text(TOY)
    (package / "broken.py").write_text("raise RuntimeError('the module is broken')\n")
    return root


@pytest.fixture
def user_code(package_dir, monkeypatch):
    """The package importable here and in subprocesses; registrations made by the test undone after it."""
    monkeypatch.syspath_prepend(str(package_dir))
    monkeypatch.setenv("PYTHONPATH", str(package_dir))
    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))
    sections, readers = dict(RECIPE_SECTIONS), {k: list(v) for k, v in SECTION_READERS.items()}
    yield package_dir
    RECIPE_SECTIONS.clear()
    RECIPE_SECTIONS.update(sections)
    SECTION_READERS.clear()
    SECTION_READERS.update(readers)


@pytest.fixture(scope="module")
def cli_run(package_dir, tmp_path_factory) -> Path:
    """A run of ``PACKAGE.guarded:ToyRecipe`` trained by ``python -m peerlearn train`` in another process."""
    out = tmp_path_factory.mktemp("runs")
    config = out / "toy.yaml"
    config.write_text(yaml.safe_dump({"recipe": f"{PACKAGE}.guarded:ToyRecipe", "data": TINY_DATA,
                                      "train": TINY_TRAIN, "toy": {"note_scale": 2.0}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(package_dir))
        done = run_cli("train", str(config), "--out", str(out), "tracking.tensorboard=false")
    assert done.returncode == 0, done.stderr
    return next(p for p in out.iterdir() if p.is_dir())


# ------------------------------------------------------------------ by reference, from the CLI and from Python
def test_a_recipe_outside_the_package_trains_from_the_cli_and_reads_back_in_new_processes(cli_run, package_dir,
                                                                                          monkeypatch, tmp_path):
    record = json.loads((cli_run / "run.json").read_text())
    reference = f"{PACKAGE}.guarded:ToyRecipe"
    assert record["recipe"] == reference and record["recipe_class"] == reference
    assert [m["name"] for m in record["members"]] == ["solo"]  # the recipe's default member
    saved = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert saved["recipe"] == reference and saved["toy"] == {"note_scale": 2.0, "fixed_width": 16}
    assert saved["members"][0]["model_args"] == {"widths": [16]}
    summary = json.loads((cli_run / "summary.json").read_text())
    assert summary["recipe"] == reference and summary["toy"]["note_scale"] == 2.0
    assert summary["members"]["solo"]["test"]["top1"] > 0.5  # it learned (10 classes)

    monkeypatch.setenv("PYTHONPATH", str(package_dir))
    done = run_cli("evaluate", str(cli_run), "--json")
    assert done.returncode == 0, done.stderr
    top1 = json.loads(done.stdout)["classification"]["solo"]["top1"]
    assert top1 == pytest.approx(summary["members"]["solo"]["test"]["top1"], abs=1e-6)
    done = run_cli("export", str(cli_run), "--format", "safetensors", "--out", str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "export").iterdir())


def test_reading_a_run_imports_its_recipe_only_through_the_guarded_function(cli_run, package_dir, monkeypatch):
    """The one import of a recorded recipe (``import_recorded_recipe``): refused there, nothing is imported and
    the run still reads, without its recipe's section."""
    import peerlearn.run_reader as reader

    module = f"{PACKAGE}.guarded"
    monkeypatch.syspath_prepend(str(package_dir))  # importable: only the guard stands in the way
    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))
    asked = []
    monkeypatch.setattr(reader, "import_recorded_recipe", lambda record: asked.append(record["recipe_class"]))
    run = peerlearn.load_run(cli_run, command="evaluate")
    assert asked == [f"{module}:ToyRecipe"] and module not in sys.modules
    assert run.config.recipe == f"{module}:ToyRecipe" and "toy" not in (run.config.__pydantic_extra__ or {})
    assert run.cohort.names == ["solo"]
    with pytest.raises(ConfigError, match="applies to runs of"):
        peerlearn.load_run(cli_run, command="probe")  # unknown recipe here: the base commands only


def test_a_recipe_by_reference_trains_from_python_and_its_section_is_checked(user_code, tmp_path):
    reference = f"{PACKAGE}.toy:ToyRecipe"
    config = {"recipe": reference, "data": TINY_DATA, "train": TINY_TRAIN, "tracking": {"tensorboard": False},
              "toy": {"fixed_width": 8}}
    result = peerlearn.train(config, out=tmp_path)
    assert result.summary["recipe"] == reference and result.config.toy.fixed_width == 8
    assert result.config.members[0].model_args == {"widths": [8]}
    with pytest.raises(ConfigError, match="toy.fixed_width"):
        load_config(config, ["toy.fixed_width=0"])
    with pytest.raises(ConfigError, match="toy.bogus"):
        load_config(config, ["toy.bogus=1"])
    with pytest.raises(ConfigError, match="key 'mutual' holds the settings of recipe mutual"):
        load_config({**config, "mutual": {"weight": 2}})
    # the reader finds the class again (its module is loaded): the section reads back
    assert peerlearn.load_run(result.run_dir).config.toy.fixed_width == 8


def test_a_shipped_recipe_can_be_named_by_reference_too():
    config = load_config({"recipe": "peerlearn.recipes.mutual:MutualRecipe", "mutual": {"weight": 2.0}})
    assert config.mutual.weight == 2.0 and [m.name for m in config.members] == ["m0", "m1"]


@pytest.mark.parametrize("reference, words", [
    ("no_such_package_xyz.recipes:Pair", "the module 'no_such_package_xyz.recipes' cannot be imported"),
    (f"{PACKAGE}.broken:Pair", "importing the module"),
    (f"{PACKAGE}.toy:Missing", "has no 'Missing'"),
    (f"{PACKAGE}.toy:NotARecipe", "the class 'NotARecipe', not a recipe"),
    (f"{PACKAGE}.toy:ToySettings", "not a recipe"),
    (":Pair", "package.module:Class"),
    ("unknown_name", "unknown recipe; allowed: independent, mutual"),
])
def test_a_reference_that_leads_to_no_recipe_is_exit_2_with_the_reason(user_code, reference, words, tmp_path,
                                                                       capsys):
    code = main(["train", f"recipe={reference}", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "key 'recipe'" in err and words in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
    if "broken" in reference:
        assert "RuntimeError: the module is broken" in err


# ------------------------------------------------------------------ sections and defaults owned by the recipe
def test_only_the_chosen_recipes_section_is_accepted(capsys, tmp_path):
    code = main(["train", "recipe=independent", "mutual.weight=5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "key 'mutual'" in err and "recipe is 'independent'" in err, err
    assert not {"mutual", "distill", "greedy", "transfer"} & set(load_config({}).__pydantic_extra__ or {})
    assert set(load_config({"recipe": "greedy"}).__pydantic_extra__) == {"greedy"}
    # null leaves a section out: a DML config becomes an independent one by override
    dml = {"recipe": "mutual", "mutual": {"weight": 2.0}}
    assert not load_config(dml, ["recipe=independent", "mutual=null"]).__pydantic_extra__
    assert load_config(dml, ["mutual=null"]).mutual.weight == 1.0  # the own section: its defaults


def test_the_recipes_default_members_and_editing_them_by_override():
    distill = load_config({"recipe": "distill"})
    assert [(m.name, m.trainable, m.model_args) for m in distill.members] == [
        ("teacher", False, {"width": 64}), ("student", True, {"width": 16})]
    edited = load_config({"recipe": "distill"}, ["members.1.model_args.width=8"])  # edits the default student
    assert [(m.name, m.model_args) for m in edited.members] == [("teacher", {"width": 64}), ("student", {"width": 8})]
    assert [m.model for m in load_config({"recipe": "greedy"}).members] == ["layerwise_cnn"]
    assert [m.model for m in load_config({"recipe": "mutual", "data": {"source": "tabular"}}).members] == ["mlp"] * 2
    given = load_config({"recipe": "distill", "members": [{"name": "s"}, {"name": "t", "trainable": False}]})
    assert [m.name for m in given.members] == ["s", "t"]  # given members are the user's, not merged


@pytest.mark.parametrize("recipe", ["independent", "mutual", "distill", "greedy"])
def test_a_config_of_recipe_data_and_train_alone_trains(recipe, tmp_path, capsys):
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump({"recipe": recipe, "data": {"source": "digits", "train_subset": 600},
                                    "train": TINY_TRAIN}))
    assert main(["train", str(path), "--out", str(tmp_path / "runs")]) == 0, capsys.readouterr().err
    run_dir = next((tmp_path / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    if recipe == "distill":  # the default teacher came untrained: the teacher stage trained it first
        assert record["stage"]["names"] == ["teacher", "distill"]
        assert {m["name"]: m["role"] for m in record["members"]} == {"teacher": "teacher", "student": "student"}
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["distill"]["teacher_epochs"] == 1
    else:
        assert len(record["members"]) == (1 if recipe == "greedy" else 2)


def test_transfer_says_what_it_needs(tmp_path, capsys):
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump({"recipe": "transfer", "data": {"source": "digits"}, "train": TINY_TRAIN}))
    assert main(["train", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "needs key 'transfer.backbones'" in err and "Traceback" not in err, err


# ------------------------------------------------------------------ --resume --change, from the declarations
def test_resume_changes_follow_the_fields_declarations_in_a_recipes_own_section(user_code, tmp_path, capsys):
    config = {"recipe": f"{PACKAGE}.toy:ToyRecipe", "data": TINY_DATA, "train": TINY_TRAIN,
              "tracking": {"tensorboard": False}}
    run_dir = peerlearn.train(config, out=tmp_path).run_dir
    code = main(["train", "--resume", str(run_dir), "--change", "toy.fixed_width=32"])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot change toy.fixed_width" in err and "toy.note_scale" in err, err
    code = main(["train", "--resume", str(run_dir), "--change", "toy.note_scale=3", "--change", "train.epochs=2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["toy"]["note_scale"] == 3.0 and summary["epochs"] == 2
    assert [c["key"] for c in summary["changes"]] == ["toy.note_scale", "train.epochs"]


# ------------------------------------------------------------------ no recipe name outside recipes/
# string constants that coincide with a recipe's name but are not one: the demo trains two recipes by name (as a
# user's config does), and "transfer" is also the kind of a recorded transfer network (run.json)
ALLOWED = {("demo.py", "independent"), ("demo.py", "mutual"), ("run_reader.py", "transfer"),
           ("run_checks.py", "transfer")}  # run.json's network kind "transfer", which the reader and its checks know


def spelled_names(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each string constant (docstrings aside) that is a recipe's name or a dotted key in its
    section (``"mutual.weight"``), and of each attribute named after one (``config.mutual``)."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value in names or (node.value.split(".")[0] in names and "." in node.value):
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append((node.lineno, f".{node.attr}"))
    return found


SHIPPED = {"independent", "mutual", "distill", "greedy", "transfer"}


def test_no_code_outside_the_recipes_spells_a_recipes_name():
    assert SHIPPED <= set(recipes.RECIPE_NAMES)
    package = REPO / "src" / "peerlearn"
    found = [f"{path.relative_to(package)}:{line} {text!r}"
             for path in sorted(package.rglob("*.py")) if "recipes" not in path.relative_to(package).parts
             for line, text in spelled_names(path.read_text(), SHIPPED) if (path.name, text) not in ALLOWED]
    assert not found, "recipe names outside peerlearn/recipes (ask the recipe instead):\n" + "\n".join(found)


def test_the_scan_sees_each_way_of_spelling_a_recipes_name():
    sample = textwrap.dedent('''
        """A docstring may say distill."""
        def f(config):
            if config.recipe == "distill":
                return config.mutual.weight
            return "greedy.epochs", "transfer learning", "independently"
    ''')
    assert sorted(spelled_names(sample, SHIPPED)) == [(4, "distill"), (5, ".mutual"), (6, "greedy.epochs")]
