"""Recipes declare members, loss terms, stages, their rules and capabilities; the trainer runs them.

The registry maps a recipe name (the config's ``recipe`` key) to its class, given as ``module:Class``
so that the config can list the names without importing any recipe. Adding a recipe is one module (a
``Recipe`` subclass, see ``recipes.base``) and one ``register_recipe`` line, here or from user code.
"""

from __future__ import annotations

import importlib
from typing import Union

from peerlearn.errors import ConfigError

_RECIPES: dict[str, Union[str, type]] = {
    "independent": "peerlearn.recipes.mutual:IndependentRecipe",
    "mutual": "peerlearn.recipes.mutual:MutualRecipe",
    "distill": "peerlearn.recipes.distill:DistillRecipe",
    "transfer": "peerlearn.recipes.transfer:TransferRecipe",
    "greedy": "peerlearn.recipes.greedy:GreedyRecipe",
}


def register_recipe(name: str, recipe: Union[str, type]) -> None:
    """Make ``recipe`` (a ``Recipe`` subclass, or ``"package.module:Class"``) the recipe called ``name``.

    A recipe class with settings of its own declares them as ``section = "key"`` and ``section_model`` (a
    ``peerlearn.config.Section`` subclass): the top-level config key ``key`` is then accepted and validated.
    Given as a string, the class is imported here so that its section is known before any config is read."""
    if isinstance(recipe, str):
        module, cls = recipe.split(":")
        recipe = getattr(importlib.import_module(module), cls)
    model = getattr(recipe, "section_model", None)
    if model is not None:
        from peerlearn.config import register_section

        register_section(recipe.section, model)
    _RECIPES[name] = recipe


def __getattr__(attribute: str):
    if attribute == "RECIPE_NAMES":  # the registered names, registrations included
        return tuple(_RECIPES)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def get_recipe(name: str):
    """The recipe class registered as ``name``; an unknown name is a config error (exit code 2) naming the key.

    The registry is the one place that knows the names, so the config layer below does not check them:
    ``api.prepare_run`` looks the recipe up before it reads any data."""
    if name not in _RECIPES:
        raise ConfigError(f"Invalid config: key 'recipe' has the value {name!r}: unknown recipe; allowed: "
                          f"{', '.join(_RECIPES)}.")
    target = _RECIPES[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    return target


def recipes_with(capability: str) -> list[str]:
    """The registered recipes that declare ``capability`` (e.g. ``supports_fused``) true."""
    return [name for name in _RECIPES if getattr(get_recipe(name), capability, False)]
