"""Render the config reference (docs/config.md) from the schema itself, so it cannot drift.

    python -m peerlearn.config_doc > docs/config.md
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from peerlearn.config import CHANGEABLE_ON_RESUME, RECIPE_SECTIONS, SECTION_READERS, RunConfig
from peerlearn.recipes import RECIPE_NAMES

INTRO = """# Config reference

Generated from the schema (`src/peerlearn/config/schema.py`, and each recipe's section in its module under
`src/peerlearn/recipes/`) by `python -m peerlearn.config_doc > docs/config.md`
(a test fails when this file is out of date). Every key can be set in the YAML file or overridden on the
command line with a dotted path, e.g. `peerlearn train cfg.yaml optim.lr=0.05 members.0.model=resnet32`.
Unknown keys, wrong types and impossible values stop the run before training (exit code 2).

A config holds the section of its own recipe only (`mutual:` in a `recipe: mutual` config); another
recipe's section is refused, naming it. Members left out are the recipe's defaults
([recipes.md](recipes.md)). Keys marked *changeable* (column "on resume") may be changed when a run is
continued (`peerlearn train --resume RUN_DIR --change KEY=VALUE`); every other key is fixed for the run's
life. A recipe declares its own changeable keys on its section's fields (`Changeable(...)`).
"""


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in args)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return f"{len(value)} default entries"
    return f"`{value!r}`"


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _resume(field) -> str:
    extra = field.json_schema_extra
    return "changeable" if isinstance(extra, dict) and extra.get("resume") == CHANGEABLE_ON_RESUME["resume"] else ""


def _recipe_section_rows() -> tuple[list[str], list[tuple[type[BaseModel], str]]]:
    """The top-level rows of the recipes' sections (``RECIPE_SECTIONS``), naming the recipes that read each."""
    shipped = set(RECIPE_NAMES)
    rows = []
    for key in RECIPE_SECTIONS:
        readers = [name for name in SECTION_READERS.get(key, []) if name in shipped] or ["?"]
        rows.append(f"| `{key}` | section | (section) | | | only in a config of recipe {', '.join(readers)}; "
                    "see below |")
    return rows, [(section, f"{key}.") for key, section in RECIPE_SECTIONS.items()]


def _sections(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, children = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type)]
        nested = next((a for a in inner if issubclass(a, BaseModel)), None)
        key = f"{prefix}{name}"
        if nested is not None:
            children.append((nested, f"{key}.0." if typing.get_origin(annotation) is list else f"{key}."))
            meaning = (f"{field.description}; see below" if field.description else "see below").replace("|", "\\|")
            default = "the recipe's" if model is RunConfig and name == "members" else _default(field)
            rows.append(f"| `{key}` | section | {default} | | {_resume(field)} | {meaning} |")
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(annotation)} | {_default(field)} | {_constraints(field)} | "
                    f"{_resume(field)} | {description} |")
    if model is RunConfig:
        recipe_rows, recipe_children = _recipe_section_rows()
        rows += recipe_rows
        children += recipe_children
    title = prefix.rstrip(".") or "top level"
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    out.append(f"\n## `{title}`\n\n{doc}\n\n| key | type | default | limits | on resume | meaning |\n"
               "|---|---|---|---|---|---|")
    out.extend(rows)
    for nested, child_prefix in children:
        _sections(nested, child_prefix, out)


def render_config_reference() -> str:
    out = [INTRO]
    _sections(RunConfig, "", out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_config_reference(), end="")
