"""``SELECT ... TO TRAIN <recipe> WITH ... [COLUMN ...] LABEL <column> INTO <model>``: a run config from the
statement, trained by ``peerlearn.train`` into the model store.

The config is the ``tabular`` source on the query (``data.options``: url, query, label, features) plus the
``WITH`` assignments, which are the dotted keys of a config file applied in order, like command-line
overrides. Two conveniences:

* ``members = [mlp, {model: mlp, model_args: {widths: [32]}}]``: a bare word is a member of that model;
* a member's ``weights`` or a transfer backbone's ``source`` may name a model of the store.

Without ``members`` the cohort is the recipe's default (``Recipe.defaults``) for feature vectors: ``mlp``
members (distill: a teacher, trained first for ``train.epochs``, and a smaller student).
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
from peerlearn.trust import config_references, read_records, require_trusted_references
from peerlearn.run_files import CONFIG_NAME, WEIGHTS_NAME

# keys the statement itself sets: WITH may not change them
STATEMENT_KEYS = ("name", "recipe", "data.source", "data.path", "data.options.url", "data.options.query",
                  "data.options.table", "data.options.label", "data.options.features", "data.options.sql_client")


def absolute_url(url: str) -> str:
    """``sqlite:///relative.db`` made absolute, so the model works from any working directory."""
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    if path is None or path.startswith("/") or path == ":memory:":
        return url
    return f"sqlite:///{Path(path).expanduser().resolve()}"


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


def member_weights_file(store: ModelStore, value: str, member_name: str) -> Optional[str]:
    """``weights = MODEL`` or ``'MODEL.MEMBER'`` naming a stored model: a .safetensors file of that one member.

    A run directory gives the member of the same name; a stored model's member usually has another name (the
    teacher is called teacher, the model's member m0), so its weights are copied once, without the member
    prefix, to ``STORE/.weights/MODEL.MEMBER.safetensors``.
    """
    from safetensors.torch import save_file

    from peerlearn.engine.checkpoint import load_weights

    model, _, member = value.partition(".")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model) or Path(value).exists() or not store.exists(model):
        return None
    run_dir = store.require(model)
    records = read_records(run_dir)  # the stored model's files are the ones it wrote (exit 2 otherwise)
    records.check(CONFIG_NAME)
    records.check(WEIGHTS_NAME)
    names = [m.name for m in load_config(run_dir / CONFIG_NAME, import_code=False).members]
    if not member:
        if member_name in names:
            member = member_name
        elif len(names) == 1:
            member = names[0]
        else:
            raise ConfigError(f"The model {model!r} has the members {', '.join(names)}; name one as weights = "
                              f"'{model}.<member>'.")
    if member not in names:
        raise ConfigError(f"The model {model!r} has no member {member!r}; its members: {', '.join(names)}.")
    target = store.root / ".weights" / f"{model}.{member}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = load_weights(run_dir / WEIGHTS_NAME, member)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(target))
    return str(target.resolve())


def resolve_store_names(config: RunConfig, store: ModelStore) -> RunConfig:
    """Member ``weights`` that name a model of the store point at its weights; the keys the recipe reads a run
    directory from (``Recipe.run_directory_keys``, e.g. a transfer backbone's source) at its directory."""
    from peerlearn.recipes import get_recipe

    updates = {}
    for index, member in enumerate(config.members):
        path = member_weights_file(store, member.weights, member.name) if member.weights else None
        if path:
            updates[f"members.{index}.weights"] = path
    tree = config.model_dump(mode="json")
    for key in get_recipe(config.recipe).run_directory_keys(config):
        name: Any = tree
        for part in key.split("."):
            name = name[int(part)] if isinstance(name, list) else name[part]
        if (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and not Path(name).exists()
                and store.exists(name)):
            updates[key] = str(store.require(name).resolve())
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


def build_config(statement: TrainStatement, url: str, features: list[str], store: ModelStore,
                 trust_code: bool = False) -> RunConfig:
    """The run config of a TO TRAIN statement. Code its WITH clause names (``members = [pkg.mod:factory]``) is
    refused (exit 2) unless ``trust_code``: a statement is read, not the user's own config (``peerlearn.trust``)."""
    overrides = with_overrides(statement)
    base: dict[str, Any] = {
        "name": statement.model,
        "recipe": statement.recipe,
        "data": {"source": "tabular", "options": {"url": absolute_url(url), "query": statement.select,
                                                  "label": statement.label, "features": features}},
    }
    try:
        config = load_config(base, overrides)  # without members: the recipe's defaults (Recipe.defaults)
    except ConfigError as error:  # name the statement part: the recipe or a WITH key
        position = statement.positions["recipe"]
        for item in statement.assignments:
            if f"'{item.key}" in str(error) or f"key {item.key!r}" in str(error):
                position = item.position
        raise SqlSyntaxError(str(error), statement.text, position) from None
    require_trusted_references([(ref, f"WITH {key}") for ref, key in config_references(config.model_dump())],
                               trusted=trust_code, source="the SQL statement's WITH clause")
    return resolve_store_names(config, store)
