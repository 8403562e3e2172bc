"""Recipes declare members, loss terms, stages, their defaults, rules and capabilities; the trainer runs them.

A config names its recipe (the ``recipe`` key) in one of two ways:

* by a registered name: ``recipe: mutual``. ``register_recipe(name, Class)`` adds a name; the shipped
  recipes are registered at the end of this file with the same call a user makes;
* by reference: ``recipe: package.module:Class``, a ``Recipe`` subclass in any importable module. The
  module is imported when the config is read (``import_recipe``), and the class registered under the
  reference, so no registration line is needed at all.

Either way the recipe's config section (``section`` and ``section_model`` on its class) becomes a key the
config accepts, and only the chosen recipe's section is accepted in a config (``peerlearn.config`` asks
this registry through ``find_recipe``, installed with ``set_recipe_finder``: the config layer imports no
recipe). A reference is code: a config given to ``peerlearn train`` or a dict given to Python is the
user's own and is imported; a run read back imports its recorded class only through the run reader
(``peerlearn.run_reader.import_recorded_recipe``), under the trust rules.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Union

from peerlearn.config import register_section, set_recipe_finder
from peerlearn.errors import ConfigError

_RECIPES: dict[str, type] = {}


def is_recipe_reference(value: str) -> bool:
    """Whether a ``recipe`` value is a ``package.module:Class`` reference rather than a registered name."""
    return ":" in value


def _recipe_base() -> type:
    from peerlearn.recipes.base import Recipe

    return Recipe


def register_recipe(name: str, recipe: Union[str, type]) -> None:
    """Make ``recipe`` (a ``Recipe`` subclass, or ``"package.module:Class"``) the recipe called ``name``.

    A recipe with settings declares them on its class as ``section = "key"`` and ``section_model`` (a
    ``peerlearn.config.Section`` subclass, defined in the recipe's module): the top-level config key ``key``
    is then accepted, validated and read as ``config.key`` in a config whose recipe is this one. Given as a
    string, the class is imported here so that its section is known before any config is read."""
    if isinstance(recipe, str):
        recipe = import_recipe(recipe, key=f"the recipe {name!r}")
    elif not (isinstance(recipe, type) and issubclass(recipe, _recipe_base())):
        raise TypeError(f"register_recipe({name!r}, ...) takes a peerlearn.recipes.base.Recipe subclass or "
                        f"'package.module:Class', not {recipe!r}")
    if getattr(recipe, "section", None) and getattr(recipe, "section_model", None) is not None:
        register_section(recipe.section, recipe.section_model, recipe=name)
    _RECIPES[name] = recipe


def import_recipe(reference: str, key: str = "key 'recipe'") -> type:
    """The ``Recipe`` subclass that ``reference`` (``package.module:Class``) names, its module imported.

    This runs the module's code: it is for references of the user's own config. Every way it can fail is a
    ``ConfigError`` (exit 2) naming ``key`` and the reference: a malformed reference, a module that cannot
    be imported (or raises while importing), a missing attribute, an attribute that is no Recipe subclass."""
    where = f"Invalid config: {key} has the value {reference!r}"
    module_name, _, qualname = reference.partition(":")
    if not module_name or not qualname or ":" in qualname or any(not p for p in module_name.split(".")):
        raise ConfigError(f"{where}: a recipe reference is written package.module:Class (e.g. "
                          "mypackage.recipes:PairRecipe).")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{where}, but the module {module_name!r} cannot be imported ({error}). Put the folder "
                          "that holds it on PYTHONPATH, or install its package.") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed while importing: say so, no traceback
        raise ConfigError(f"{where}, but importing the module {module_name!r} failed: "
                          f"{type(error).__name__}: {error}.") from None
    return _recipe_class(module, qualname, where)


def _recipe_class(module, qualname: str, where: str) -> type:
    target = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{where}, but the module {module.__name__!r} has no {qualname!r}.")
    base = _recipe_base()
    if not (isinstance(target, type) and issubclass(target, base)):
        kind = f"the class {target.__name__!r}" if isinstance(target, type) else f"a {type(target).__name__}"
        raise ConfigError(f"{where}, which is {kind}, not a recipe: a recipe is a subclass of "
                          "peerlearn.recipes.base.Recipe (see docs/recipes.md).")
    return target


def find_recipe(value: str, import_code: bool = True) -> Optional[type]:
    """The recipe class a config's ``recipe`` value names: a registered name, or a reference (imported and
    registered under it when ``import_code``; without it, found only when its module is already loaded,
    since finding it then runs no code). An unknown name is a ``ConfigError`` naming the key and the
    registered names; without ``import_code`` (a run read back, whose recipe may be registered by code not
    imported here) it is None, like a reference not found without importing."""
    if value in _RECIPES:
        return _RECIPES[value]
    if not is_recipe_reference(value) and not import_code:
        return None
    if not is_recipe_reference(value):
        raise ConfigError(f"Invalid config: key 'recipe' has the value {value!r}: unknown recipe; allowed: "
                          f"{', '.join(_RECIPES)}, or a recipe of your own as package.module:Class.")
    module_name = value.partition(":")[0]
    if import_code:
        recipe = import_recipe(value)
    elif module_name in sys.modules:
        recipe = _recipe_class(sys.modules[module_name], value.partition(":")[2],
                               f"Invalid config: key 'recipe' has the value {value!r}")
    else:
        return None
    register_recipe(value, recipe)
    return recipe


def __getattr__(attribute: str):
    if attribute == "RECIPE_NAMES":  # the registered names, registrations included
        return tuple(_RECIPES)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def get_recipe(name: str):
    """The recipe class a config's ``recipe`` value names (``find_recipe``; a reference is imported); an unknown
    name or a reference that does not lead to a recipe is a config error (exit code 2) naming the key."""
    return find_recipe(name, import_code=True)


def recipes_with(capability: str) -> list[str]:
    """The registered recipes that declare ``capability`` (e.g. ``supports_fused``) true."""
    return [name for name in _RECIPES if getattr(_RECIPES[name], capability, False)]


set_recipe_finder(find_recipe, default="independent")  # the recipe of a config that names none

# The shipped recipes, registered like any other: each module holds its recipe class, its section, defaults
# and rules. `recipe: peerlearn.recipes.mutual:MutualRecipe` names the same class by reference.
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
