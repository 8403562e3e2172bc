"""Recipes declare members, loss terms and stages; the trainer runs them.

Each recipe is loaded lazily from ``module:class`` so that the config can list the names cheaply.
"""

from __future__ import annotations

import importlib

from peerlearn.errors import ConfigError

_RECIPES = {
    "independent": "peerlearn.recipes.mutual:IndependentRecipe",
    "mutual": "peerlearn.recipes.mutual:MutualRecipe",
    "distill": "peerlearn.recipes.distill:DistillRecipe",
    "transfer": "peerlearn.recipes.transfer:TransferRecipe",
    "greedy": "peerlearn.recipes.greedy:GreedyRecipe",
}

RECIPE_NAMES = tuple(_RECIPES)


def get_recipe(name: str):
    """The recipe class registered as ``name``; an unknown name is a config error (exit code 2) naming the key.

    The registry is the one place that knows the names, so the config layer below does not check them:
    ``api.prepare_run`` looks the recipe up before it reads any data."""
    if name not in _RECIPES:
        raise ConfigError(f"Invalid config: key 'recipe' has the value {name!r}: unknown recipe; allowed: "
                          f"{', '.join(RECIPE_NAMES)}.")
    module, cls = _RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)
