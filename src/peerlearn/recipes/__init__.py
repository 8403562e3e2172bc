"""Recipes declare members, loss terms, stages, their rules and capabilities; the trainer runs them.

The registry maps a recipe name (the config's ``recipe`` key) to its class, and enters the recipe's config
section (declared on the class) into ``peerlearn.config.RECIPE_SECTIONS``, so that a config can hold it.
Adding a recipe is one module (a ``Recipe`` subclass with its section, rules and capabilities, see
``recipes.base``) and one ``register_recipe`` line, at the end of this file or from user code.
"""

from __future__ import annotations

import importlib
from typing import Union

from peerlearn.errors import ConfigError

_RECIPES: dict[str, type] = {}


def register_recipe(name: str, recipe: Union[str, type]) -> None:
    """Make ``recipe`` (a ``Recipe`` subclass, or ``"package.module:Class"``) the recipe called ``name``.

    A recipe with settings declares them on its class as ``section = "key"`` and ``section_model`` (a
    ``peerlearn.config.Section`` subclass, defined in the recipe's module): the top-level config key ``key``
    is then accepted, validated and read as ``config.key``. Given as a string, the class is imported here so
    that its section is known before any config is read."""
    if isinstance(recipe, str):
        module, cls = recipe.split(":")
        recipe = getattr(importlib.import_module(module), cls)
    if getattr(recipe, "section", None) and getattr(recipe, "section_model", None) is not None:
        from peerlearn.config import register_section

        register_section(recipe.section, recipe.section_model)
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
    return _RECIPES[name]


def recipes_with(capability: str) -> list[str]:
    """The registered recipes that declare ``capability`` (e.g. ``supports_fused``) true."""
    return [name for name in _RECIPES if getattr(get_recipe(name), capability, False)]


# The shipped recipes, registered like any other: each module holds its recipe class and its section.
for _name, _target in (("independent", "peerlearn.recipes.mutual:IndependentRecipe"),
                       ("mutual", "peerlearn.recipes.mutual:MutualRecipe"),
                       ("distill", "peerlearn.recipes.distill:DistillRecipe"),
                       ("transfer", "peerlearn.recipes.transfer:TransferRecipe"),
                       ("greedy", "peerlearn.recipes.greedy:GreedyRecipe"),
                       ("one", "peerlearn.recipes.one:OneRecipe"),
                       ("cl_ilr", "peerlearn.recipes.cl_ilr:ClIlrRecipe"),
                       ("okddip", "peerlearn.recipes.okddip:OkddipRecipe"),
                       ("kdcl", "peerlearn.recipes.kdcl:KdclRecipe"),
                       ("pcl", "peerlearn.recipes.pcl:PclRecipe")):
    register_recipe(_name, _target)
