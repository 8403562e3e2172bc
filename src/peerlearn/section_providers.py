"""Modules that provide config sections, imported by name the first time a config is validated.

The config layer imports no recipe (``tests/test_layering.py``), yet a config holds the recipes' sections
(``mutual:``, ``distill:``, ...), which ``peerlearn.recipes.register_recipe`` enters into
``peerlearn.config.RECIPE_SECTIONS`` when the recipes are imported. The package root declares here, like an
entry point, that ``peerlearn.recipes`` provides sections (``provide_sections``); ``RunConfig`` calls
``load_section_providers`` before it reads its top-level keys. So ``import peerlearn`` (and
``peerlearn --help``) stays light, and a config read through ``peerlearn.config`` alone still knows every
shipped recipe's section.
"""

from __future__ import annotations

import importlib

_PENDING: list[str] = []


def provide_sections(module: str) -> None:
    """Import ``module`` (which registers config sections) before the next config is validated."""
    if module not in _PENDING:
        _PENDING.append(module)


def load_section_providers() -> None:
    """Import the declared providers not imported yet (each once; one that imports the config is safe)."""
    while _PENDING:
        importlib.import_module(_PENDING.pop(0))
