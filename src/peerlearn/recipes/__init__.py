"""Recipes declare members, loss terms and stages; the trainer runs them.

Each recipe is loaded lazily from ``module:class`` so that the config can list the names cheaply.
"""

from __future__ import annotations

import importlib

_RECIPES = {
    "independent": "peerlearn.recipes.mutual:IndependentRecipe",
    "mutual": "peerlearn.recipes.mutual:MutualRecipe",
    "distill": "peerlearn.recipes.distill:DistillRecipe",
    "transfer": "peerlearn.recipes.transfer:TransferRecipe",
    "greedy": "peerlearn.recipes.greedy:GreedyRecipe",
}

RECIPE_NAMES = tuple(_RECIPES)


def get_recipe(name: str):
    module, cls = _RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)
