"""Which keys a resumed run may change (``peerlearn train --resume RUN --change KEY=VALUE``), read from the
schema: a field declared with ``Changeable(...)`` instead of ``Field(...)`` may change, with everything under
it (a dict-valued field's entries); every other key may not. A recipe's section declares its own fields the
same way, so no list of key names is kept anywhere.
"""

from __future__ import annotations

import typing
from typing import Any, Iterator, Optional

from pydantic import BaseModel

from peerlearn.config.schema import CHANGEABLE_ON_RESUME, RunConfig


def _declared_changeable(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and all(extra.get(k) == v for k, v in CHANGEABLE_ON_RESUME.items())


def _nested_model(annotation: Any) -> Optional[type[BaseModel]]:
    """The section type inside ``annotation`` (``Section``, ``Optional[Section]``, ``list[Section]``,
    ``dict[int, Section]``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _top_sections(config: RunConfig) -> dict[str, type[BaseModel]]:
    """The config's top-level sections by key: the built-in fields and the run's recipe section."""
    own = {key: type(value) for key, value in (config.__pydantic_extra__ or {}).items() if isinstance(value, BaseModel)}
    return {**RunConfig.model_fields, **own}


def changeable_on_resume(config: RunConfig, key: str) -> bool:
    """Whether the dotted ``key`` (e.g. ``optim.lr``, ``members.0.max_norm``, ``mutual.weight``) of ``config`` is
    declared changeable: some field on its path was declared with ``Changeable``. Item indices and dict
    keys are stepped over."""
    parts = key.split(".")
    top = _top_sections(config).get(parts[0])
    if top is None:
        return False
    if isinstance(top, type):  # the recipe's section: a model with no field of its own above it
        model: Optional[type[BaseModel]] = top
    else:
        if _declared_changeable(top):
            return True
        model = _nested_model(top.annotation)
    for part in parts[1:]:
        if model is None:
            return False
        field = model.model_fields.get(part)
        if field is None:  # a list index or a dict key: the same model goes on below it
            continue
        if _declared_changeable(field):
            return True
        model = _nested_model(field.annotation)
    return False


def changeable_keys(config: RunConfig) -> list[str]:
    """Every key of ``config`` declared changeable, written with ``*`` for a list item (``members.*.optim``)."""
    keys: list[str] = []
    for name, top in _top_sections(config).items():
        if isinstance(top, type):
            keys.extend(_walk(top, f"{name}."))
        elif _declared_changeable(top):
            keys.append(name)
        else:
            model = _nested_model(top.annotation)
            if model is not None:
                keys.extend(_walk(model, f"{name}.*." if typing.get_origin(top.annotation) is list else f"{name}."))
    return keys


def _walk(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        if _declared_changeable(field):
            yield f"{prefix}{name}"
            continue
        nested = _nested_model(field.annotation)
        if nested is not None:
            origin = typing.get_origin(field.annotation)
            yield from _walk(nested, f"{prefix}{name}.*." if origin in (list, dict) else f"{prefix}{name}.")
