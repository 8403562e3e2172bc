"""``SELECT ... TO TRAIN <recipe> WITH ... [COLUMN ...] LABEL <column> INTO <model>``: a run config from the
statement, trained by ``peerlearn.train`` into the model store.

The config is the ``tabular`` source on the query (``data.options``: url, query, label, features) plus the
``WITH`` assignments, which are the dotted keys of a config file applied in order, like command-line
overrides. Two conveniences:

* ``members = [mlp, {model: mlp, model_args: {widths: [32]}}]``: a bare word is a member of that model;
* a member's ``weights`` or a transfer backbone's ``source`` may name a model of the store.

Without ``members`` the cohort is one ``mlp`` (independent, transfer), two (mutual) or a teacher and a
student (distill: the teacher trains first for ``distill.teacher_epochs``, default ``train.epochs``).
Without ``COLUMN`` the features are every numeric column but the label, leaving out identifiers
(``peerlearn.data.tabular.default_features``); the columns used are written into the config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from peerlearn.config import RunConfig, load_config
from peerlearn.data.tabular import default_features, describe_left_out, run_query, sqlite_path
from peerlearn.data.sql_read import url_scheme
from peerlearn.errors import ConfigError
from peerlearn.sql.grammar import SqlSyntaxError
from peerlearn.sql.statements import TrainStatement
from peerlearn.sql.store import ModelStore

# keys the statement itself sets: WITH may not change them
STATEMENT_KEYS = ("name", "recipe", "data.source", "data.path", "data.options.url", "data.options.query",
                  "data.options.table", "data.options.label", "data.options.features", "data.options.sql_client")


def absolute_url(url: str) -> str:
    """``sqlite:///relative.db`` made absolute, so the model works from any working directory."""
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    if path is None or path.startswith("/") or path == ":memory:":
        return url
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def default_members(recipe: str) -> list[dict[str, Any]]:
    if recipe == "mutual":
        return [{"model": "mlp"}, {"model": "mlp"}]
    if recipe == "distill":
        return [{"name": "teacher", "model": "mlp", "trainable": False}, {"name": "student", "model": "mlp"}]
    return [{"model": "mlp"}]


def member_entries(value: Any, statement: TrainStatement, position: int) -> Any:
    """``[mlp, {...}]``: bare words become ``{model: word}``."""
    if not isinstance(value, list):
        raise SqlSyntaxError("Invalid WITH value: members is a list, e.g. members = [mlp, mlp].", statement.text,
                             position)
    return [{"model": item} if isinstance(item, str) else item for item in value]


def _reserved(key: str) -> Optional[str]:
    for reserved in STATEMENT_KEYS:
        if key == reserved or key.startswith(reserved + ".") or reserved.startswith(key + "."):
            return reserved
    return None


def with_overrides(statement: TrainStatement) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in statement.assignments:
        reserved = _reserved(item.key)
        if reserved:
            raise SqlSyntaxError(f"Invalid WITH key {item.key!r}: the statement sets {reserved} itself (the query, "
                                 "COLUMN, LABEL, INTO and the recipe after TRAIN).", statement.text, item.position)
        value = member_entries(item.value, statement, item.value_position) if item.key == "members" else item.value
        overrides[item.key] = value
    return overrides


def resolve_store_names(config: RunConfig, store: ModelStore) -> RunConfig:
    """Member ``weights`` and backbone ``source`` values that name a model of the store become its directory."""
    def stored(value: Optional[str]) -> Optional[str]:
        if value and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) and not Path(value).exists() \
                and store.exists(value):
            return str(store.require(value).resolve())
        return None

    updates = {}
    for index, member in enumerate(config.members):
        path = stored(member.weights)
        if path:
            updates[f"members.{index}.weights"] = path
    for index, backbone in enumerate(config.transfer.backbones):
        path = stored(backbone.source)
        if path:
            updates[f"transfer.backbones.{index}.source"] = path
    return load_config(config, updates) if updates else config


def choose_features(statement: TrainStatement, url: str) -> tuple[list[str], dict[str, str]]:
    """COLUMN's columns, or the default ones of the query's rows (and the columns left out, with why)."""
    table = run_query(url, statement.select, "auto", "the query before TO")
    if statement.label not in table.columns:
        raise SqlSyntaxError(f"The query has no column {statement.label!r} to use as the LABEL; its columns: "
                             f"{', '.join(table.columns)}.", statement.text, statement.positions["label"])
    if statement.columns is not None:
        for column in statement.columns:
            if column not in table.columns:
                raise SqlSyntaxError(f"The query has no column {column!r}; its columns: {', '.join(table.columns)}.",
                                     statement.text, statement.positions[f"column:{column}"])
        if statement.label in statement.columns:
            raise SqlSyntaxError(f"COLUMN lists the label {statement.label!r}; a label cannot be a feature.",
                                 statement.text, statement.positions[f"column:{statement.label}"])
        return list(statement.columns), {}
    features, left_out = default_features(table, statement.label)
    if not features:
        raise SqlSyntaxError(f"The query has no numeric column besides the label; its columns: "
                             f"{', '.join(table.columns)} ({describe_left_out(left_out)}).", statement.text,
                             statement.positions["label"])
    return features, left_out


def build_config(statement: TrainStatement, url: str, features: list[str], store: ModelStore) -> RunConfig:
    overrides = with_overrides(statement)
    base: dict[str, Any] = {
        "name": statement.model,
        "recipe": statement.recipe,
        "data": {"source": "tabular", "options": {"url": absolute_url(url), "query": statement.select,
                                                  "label": statement.label, "features": features}},
        "members": default_members(statement.recipe),
    }
    if statement.recipe == "distill" and "members" not in overrides and "distill.teacher_epochs" not in overrides:
        base["distill"] = {"teacher_epochs": overrides.get("train.epochs", 10)}
    try:
        config = load_config(base, overrides)
    except ConfigError as error:  # name the statement part: the recipe or a WITH key
        position = statement.positions["recipe"]
        for item in statement.assignments:
            if f"'{item.key}" in str(error) or f"key {item.key!r}" in str(error):
                position = item.position
        raise SqlSyntaxError(str(error), statement.text, position) from None
    return resolve_store_names(config, store)
