"""Every recipe owns its rules: a config section, a validate hook and declared capabilities; a new
recipe joins with one registry call and runs on the shared executors."""

import inspect
import json
from pathlib import Path

import pytest
import torch
from pydantic import Field

import peerlearn
import peerlearn.recipes as recipes
from conftest import run_cli
from peerlearn.config import RunConfig, Section, load_config
from peerlearn.engine.executors import FusedExecutor, SimultaneousLoop, select_executor
from peerlearn.errors import ConfigError
from peerlearn.recipes import get_recipe, recipes_with, register_recipe
from peerlearn.recipes.base import Recipe

BASE_COMMANDS = {"evaluate", "analyze", "report", "export", "predict"}
# what each shipped recipe is expected to declare: (section, fused, distributed, extra commands)
EXPECTED = {
    "independent": (None, True, True, set()),
    "mutual": ("mutual", True, True, set()),
    "distill": ("distill", False, False, set()),
    "transfer": ("transfer", False, False, set()),
    "greedy": ("greedy", False, False, {"probe"}),
    "one": ("one", False, False, set()),
    "cl_ilr": ("cl_ilr", False, False, set()),
    "okddip": ("okddip", False, False, set()),
    "kdcl": ("kdcl", False, False, set()),
    "pcl": ("pcl", False, False, set()),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_registered_recipe_declares_section_validation_and_capabilities(name):
    cls = get_recipe(name)
    assert issubclass(cls, Recipe) and cls.name == name
    section, fused, distributed, extra = EXPECTED[name]
    assert cls.section == section
    if section is not None:
        settings = getattr(RunConfig(recipe=name), section)
        assert isinstance(settings, Section)
        assert type(settings) is cls.section_model  # declared by the recipe ...
        assert type(settings).__module__ == cls.__module__  # ... in the recipe's own module
    assert (cls.supports_fused, cls.supports_distributed) == (fused, distributed)
    assert set(cls.commands) == BASE_COMMANDS | extra
    assert inspect.ismethod(cls.validate) and cls.validate.__self__ is cls  # a classmethod: runs before building
    assert list(inspect.signature(cls.validate).parameters) == ["config", "data"]


def test_the_registry_lists_exactly_the_expected_recipes():
    shipped = [name for name in recipes.RECIPE_NAMES if ":" not in name]  # recipes named by reference register too
    assert set(shipped) == set(EXPECTED)
    assert [n for n in recipes_with("supports_fused") if n in shipped] == ["independent", "mutual"]
    assert [n for n in recipes_with("supports_distributed") if n in shipped] == ["independent", "mutual"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_declared_capabilities_are_enforced(tiny, name):
    config = load_config(tiny(recipe=name, engine={"fused": True}))
    cls = get_recipe(name)
    if cls.supports_fused:
        cls.check_capabilities(config)
    else:
        with pytest.raises(ConfigError, match=f"recipe '{name}' has no fused step; allowed with recipes: "
                                              "independent, mutual"):
            cls.check_capabilities(config)
    plain = load_config(tiny(recipe=name))
    if cls.supports_distributed:
        cls.check_capabilities(plain, world_size=2)
    else:
        with pytest.raises(ConfigError, match=f"recipe '{name}' cannot run distributed \\(2 processes\\)"):
            cls.check_capabilities(plain, world_size=2)


def test_a_recipe_refused_by_its_capabilities_exits_2_before_loading_data(tiny, tmp_path, capsys):
    from peerlearn.cli import main

    assert main(["train", "recipe=greedy", "engine.fused=true", "--out", str(tmp_path)]) == 2
    assert "recipe 'greedy' has no fused step" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ a new recipe: one module, one registry line
class PairRecipe(Recipe):
    """A toy recipe: exactly two members, each trained with CE, run by the shared executors."""

    name = "pair"
    supports_fused = True
    validated = 0

    @classmethod
    def validate(cls, config, data) -> None:
        super().validate(config, data)
        cls.validated += 1
        if len(config.members) != 2:
            raise ConfigError(f"Invalid config: recipe 'pair' trains two members; key 'members' has "
                              f"{len(config.members)}.")

    def build_cohort(self):
        cohort = super().build_cohort()
        self.executor = select_executor(self, self.config.engine.fused)
        return cohort

    def step(self, batch):
        return self.executor.step(self, batch)

    # the loss the executors call: CE only, nothing shared between the members
    def share(self, logits, features):
        return None, None

    def member_loss(self, name, logits, features, probs, feats, batch):
        return self.supervised_loss(name, logits, batch.y), {}

    def stacked_losses(self, logits, features, batch):
        return [(self.supervised_loss(m.name, logits[k], batch.y), {}) for k, m in enumerate(self.cohort.trainable)]


@pytest.fixture
def pair_registered(monkeypatch):
    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))  # undone after the test
    PairRecipe.validated = 0
    register_recipe("pair", PairRecipe)  # the one line a new recipe needs
    return PairRecipe


def _mlp_pair(tiny, **sections):
    members = [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in "ab"]
    return tiny(recipe="pair", members=members, train={"epochs": 1, "progress": "off", "threads": 1}, **sections)


def test_a_toy_recipe_joins_with_one_registry_call_and_trains(pair_registered, tiny, tmp_path):
    assert "pair" in recipes.RECIPE_NAMES and recipes_with("supports_fused")[-1] == "pair"
    loop = peerlearn.train(_mlp_pair(tiny), out=tmp_path)
    assert pair_registered.validated == 1  # the api ran its validation before building it
    assert isinstance(loop.recipe.executor, SimultaneousLoop)
    assert loop.summary["recipe"] == "pair"
    assert min(loop.member_accuracy("test").values()) > 0.5  # it learned (10 classes: chance is 0.1)
    # the shared fused executor runs it too, to the loop's weights
    fused = peerlearn.train(_mlp_pair(tiny, engine={"fused": True}), out=tmp_path)
    assert isinstance(fused.recipe.executor, FusedExecutor)
    for a, b in zip(loop.cohort, fused.cohort):
        for x, y in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_a_toy_recipes_validation_refuses_its_mistakes(pair_registered, tiny, tmp_path):
    config = _mlp_pair(tiny)
    config["members"] = config["members"] + [{"name": "c", "model": "mlp"}]
    with pytest.raises(ConfigError, match="recipe 'pair' trains two members; key 'members' has 3"):
        peerlearn.train(config, out=tmp_path)


# ------------------------------------------------------------------ a new recipe with settings of its own
class ScaledPairSettings(Section):
    """The toy recipe's own config section."""

    loss_scale: float = Field(1.0, gt=0, allow_inf_nan=False)


class ScaledPairRecipe(PairRecipe):
    """The toy pair, each member's CE multiplied by ``scaled_pair.loss_scale``: settings owned by the recipe."""

    name = "scaled_pair"
    section = "scaled_pair"
    section_model = ScaledPairSettings

    def member_loss(self, name, logits, features, probs, feats, batch):
        loss, terms = super().member_loss(name, logits, features, probs, feats, batch)
        return loss * self.config.scaled_pair.loss_scale, terms


@pytest.fixture
def registry_restored(monkeypatch):
    """Registrations made by the test are undone after it (recipes and their sections)."""
    from peerlearn.config import RECIPE_SECTIONS, SECTION_READERS

    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))
    sections, readers = dict(RECIPE_SECTIONS), {k: list(v) for k, v in SECTION_READERS.items()}
    yield
    RECIPE_SECTIONS.clear()
    RECIPE_SECTIONS.update(sections)
    SECTION_READERS.clear()
    SECTION_READERS.update(readers)


def test_a_recipe_with_its_own_settings_is_one_module_and_one_registry_line(registry_restored, tiny, tmp_path,
                                                                            monkeypatch):
    from peerlearn.config import load_config

    members = [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in "ab"]
    config = tiny(recipe="scaled_pair", members=members, train={"epochs": 1, "progress": "off", "threads": 1},
                  scaled_pair={"loss_scale": 2.0})
    with pytest.raises(ConfigError, match="key 'recipe' has the value 'scaled_pair': unknown recipe"):
        load_config(config)  # before registration the name is unknown
    register_recipe("scaled_pair", ScaledPairRecipe)  # the one line: the recipe and its section
    assert load_config(config).scaled_pair.loss_scale == 2.0
    assert load_config(config, ["scaled_pair.loss_scale=3"]).scaled_pair.loss_scale == 3.0
    with pytest.raises(ConfigError, match="scaled_pair.loss_scale"):
        load_config(config, ["scaled_pair.loss_scale=-1"])
    with pytest.raises(ConfigError, match="scaled_pair.bogus"):
        load_config(config, ["scaled_pair.bogus=1"])
    with pytest.raises(ConfigError, match="key 'nonsense' is not a known key"):
        load_config({**config, "nonsense": {}})
    run = peerlearn.train(config, out=tmp_path)
    assert run.summary["recipe"] == "scaled_pair" and min(run.member_accuracy("test").values()) > 0.5
    saved = load_config(run.run_dir / "config.yaml")  # the run's own config keeps the section
    assert saved.scaled_pair.loss_scale == 2.0
    # the run records its recipe class: a new process evaluates it (the CLI imports and registers the recipe)
    record = json.loads((run.run_dir / "run.json").read_text())
    assert record["recipe_class"] == f"{__name__}:ScaledPairRecipe"
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    done = run_cli("evaluate", str(run.run_dir), "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["classification"]
    assert scores["a"]["top1"] == pytest.approx(run.summary["members"]["a"]["test"]["top1"], abs=1e-6)
    # where the recipe cannot be imported, its section is left out: reading a run needs none of its settings
    monkeypatch.setenv("PYTHONPATH", "")
    done = run_cli("evaluate", str(run.run_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["classification"]["a"]["top1"] == scores["a"]["top1"]
    done = run_cli("probe", str(run.run_dir))  # the base commands apply; probe does not
    assert done.returncode == 2 and "recipe 'scaled_pair'" in done.stderr and "Traceback" not in done.stderr


def test_shipped_recipe_sections_are_registered_like_any_other():
    """The config layer holds no recipe's section: each comes from its recipe class through the registry."""
    from peerlearn.config import RECIPE_SECTIONS

    assert not {"mutual", "distill", "transfer", "greedy"} & set(RunConfig.model_fields)
    for name in recipes.RECIPE_NAMES:
        cls = get_recipe(name)
        if cls.section is not None:
            assert RECIPE_SECTIONS[cls.section] is cls.section_model
