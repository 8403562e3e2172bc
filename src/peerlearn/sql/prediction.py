"""``TO PREDICT`` and ``TO EVALUATE``: a stored model applied to the rows of a query.

The model is rebuilt with ``peerlearn.load_run`` (its training rows give the standardisation, as in
training); the query's rows become features through the model's own feature columns
(``data.options.features``), standardised the same way.

Prediction of a cohort: the ensemble (mean of the trainable members' class probabilities, as in
``peerlearn evaluate``) when it has several trainable members, else its one trainable member (a distilled
student, a transfer head); ``WITH member = NAME`` picks a member.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F

from peerlearn.data.batches import BatchStream
from peerlearn.data.sql_read import url_scheme
from peerlearn.data.bundle import Split
from peerlearn.data.tabular import Table, label_text, encode_labels, feature_matrix, run_query
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.errors import ConfigError
from peerlearn.evaluate.features import predict_with_features
from peerlearn.progress import Mode, progress_bar
from peerlearn.evaluate.runner import classification_scores, ensemble_members, select_members
from peerlearn.sql.grammar import SqlSyntaxError
from peerlearn.sql.statements import EvaluateStatement, PredictStatement
from peerlearn.sql.store import ModelStore
from peerlearn.sql.writer import check_prediction_target, value_kind, write_prediction_table
from peerlearn.run_files import CONFIG_NAME

PREDICT_OPTIONS = {
    "probabilities": "true: also a column <column>_prob_<class> per class",
    "member": "the member that predicts (default: the ensemble of the trainable members)",
    "keys": "the query's columns copied to the table (default: every column that is neither a feature nor "
            "the label)",
    "overwrite": "true: replace the table if it exists and an earlier TO PREDICT created it (never a table "
                 "the query reads or that peerlearn did not create)",
}


@dataclass
class StoredModel:
    name: str
    config: Any
    data: Any
    run: Any  # the LoadedRun (peerlearn.run_reader)
    features: list[str]
    label: str


def load_model(store: ModelStore, name: str, trust_code: bool = False) -> StoredModel:
    """The stored model ``name`` read back (``peerlearn.load_run``: hashes checked; code it names imported only
    when it is signed with your key or ``trust_code``)."""
    from peerlearn.api import load_run

    run_dir = store.require(name)
    config, data, run = load_run(run_dir, trust_code=trust_code)
    if config.data.source != "tabular":
        raise ConfigError(f"The model {name!r} was trained on the {config.data.source!r} source, not on table rows; "
                          "only tabular models read the rows of a query.")
    for member in run.cohort:  # a transfer head trained on cached features: run the backbone on the rows
        if getattr(member.model, "head_only", False):
            member.model.head_only = False
    options = config.data.options
    features = options.get("features")
    if not features:
        raise ConfigError(f"The model {name!r} does not list its feature columns (data.options.features in "
                          f"{str(run_dir / CONFIG_NAME)!r}); it cannot be applied to other rows.")
    return StoredModel(name, config, data, run, list(features), options.get("label", ""))


def query_table(url: str, select: str, progress: Mode = "off") -> Table:
    with progress_bar(total=1, desc="reading the query's rows", unit="queries", mode=progress) as bar:
        table = run_query(url, select, "auto", "the query before TO")
        bar.update(1)
    if not table.rows:
        raise ConfigError("The query before TO gives no rows.")
    return table


def _stream(model: StoredModel, x: torch.Tensor, y: torch.Tensor) -> BatchStream:
    return model.run.stream_of(Split(x, y))


def predicting_members(model: StoredModel, member: Optional[str]) -> list[str]:
    if member is not None:
        return select_members(model.run, [member])
    trainable = ensemble_members(model.run, model.run.cohort.names)
    return trainable or model.run.cohort.names[:1]


def class_probabilities(model: StoredModel, x: torch.Tensor, names: list[str], progress: Mode = "off"
                        ) -> torch.Tensor:
    """[N, C]: the mean of the members' softmax outputs (one member: its own)."""
    logits, _, _ = predict_with_features(model.run.cohort, _stream(model, x, torch.full((len(x),), -1)), names,
                                         progress=progress)
    return torch.stack([F.softmax(logits[n], dim=1) for n in names]).mean(0)


def typed_classes(class_names: list[str]) -> tuple[list[Any], str]:
    """Class names as the values written (numbers when every name is one) and their column kind."""
    for convert, kind in ((int, "integer"), (float, "real")):
        try:
            return [convert(name) for name in class_names], kind
        except ValueError:
            continue
    return list(class_names), "text"


def identifier(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


# ------------------------------------------------------------------ TO PREDICT
def predict_options(statement: PredictStatement) -> dict[str, Any]:
    options = {"probabilities": False, "member": None, "keys": None, "overwrite": False}
    for item in statement.options:
        if item.key not in PREDICT_OPTIONS:
            allowed = "; ".join(f"{k}: {v}" for k, v in PREDICT_OPTIONS.items())
            raise SqlSyntaxError(f"Unknown TO PREDICT option {item.key!r}; allowed: {allowed}.", statement.text,
                                 item.position)
        value = item.value
        if item.key in ("probabilities", "overwrite") and not isinstance(value, bool):
            raise SqlSyntaxError(f"The option {item.key!r} is true or false.", statement.text, item.value_position)
        if item.key == "member" and not isinstance(value, str):
            raise SqlSyntaxError("The option 'member' is a member name.", statement.text, item.value_position)
        if item.key == "keys":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SqlSyntaxError("The option 'keys' is a list of column names, e.g. keys = [id].",
                                     statement.text, item.value_position)
        options[item.key] = value
    return options


def fold_names(statement: PredictStatement, url: str) -> PredictStatement:
    """PostgreSQL folds unquoted names to lower case: write the table so that a plain SELECT finds it."""
    if url_scheme(url) not in ("postgresql", "postgres"):
        return statement

    def fold(name: Optional[str]) -> Optional[str]:
        return name if name is None or name in statement.quoted else name.lower()

    return replace(statement, schema=fold(statement.schema), table=fold(statement.table),
                   column=fold(statement.column))


def run_predict(statement: PredictStatement, url: str, store: ModelStore, overwrite: bool = False,
                trust_code: bool = False, progress: Mode = "off") -> dict[str, Any]:
    options = predict_options(statement)
    statement = fold_names(statement, url)
    lower = url_scheme(url) in ("postgresql", "postgres") and statement.column not in statement.quoted
    check_prediction_target(url, statement.table, statement.schema, statement.select)  # before the work
    model = load_model(store, statement.model, trust_code)
    table = query_table(url, statement.select, progress)
    x = feature_matrix(table, model.features)
    keys = options["keys"]
    if keys is None:
        keys = [c for c in table.columns if c not in model.features and c != model.label]
    missing = [k for k in keys if k not in table.columns]
    if missing:
        raise ConfigError(f"The option keys names {', '.join(missing)}, which the query does not give; its columns: "
                          f"{', '.join(table.columns)}.")
    if not keys:
        raise ConfigError("The query gives no column to tell its rows apart besides the features (an id, say): "
                          "select one, or name key columns with WITH keys = [...].")
    names = predicting_members(model, options["member"])
    probabilities = class_probabilities(model, x, names, progress)
    classes, kind = typed_classes(model.data.class_names)
    predicted = probabilities.argmax(1).tolist()
    index = [table.columns.index(k) for k in keys]
    columns = [(k, value_kind([row[i] for row in table.rows])) for k, i in zip(keys, index)]
    columns.append((statement.column, kind))
    probability_columns = [f"{statement.column}_prob_{identifier(str(c))}" for c in model.data.class_names]
    if lower:
        probability_columns = [name.lower() for name in probability_columns]
    if options["probabilities"]:
        columns += [(name, "real") for name in probability_columns]
    names_used = [name for name, _ in columns]
    repeated = sorted({n for n in names_used if names_used.count(n) > 1})
    if repeated:
        raise ConfigError(f"The result table would have the column {repeated[0]!r} twice (a key column and the "
                          "prediction); name another prediction column, or choose keys with WITH keys = [...].")
    rows = []
    for n, row in enumerate(table.rows):
        values = [row[i] for i in index] + [classes[predicted[n]]]
        if options["probabilities"]:
            values += [float(p) for p in probabilities[n]]
        rows.append(values)
    with progress_bar(total=1, desc=f"writing {len(rows)} rows", unit="tables", mode=progress) as bar:
        write_prediction_table(url, statement.table, statement.schema, columns, rows, statement.select,
                               overwrite=overwrite or options["overwrite"])
        bar.update(1)
    target = f"{statement.schema}.{statement.table}" if statement.schema else statement.table
    return {"table": target, "rows": len(rows), "columns": [name for name, _ in columns],
            "predicted_by": names[0] if len(names) == 1 else f"{ENSEMBLE} of {', '.join(names)}"}


# ------------------------------------------------------------------ TO EVALUATE
def run_evaluate(statement: EvaluateStatement, url: str, store: ModelStore, trust_code: bool = False,
                 progress: Mode = "off") -> dict[str, Any]:
    model = load_model(store, statement.model, trust_code)
    table = query_table(url, statement.select, progress)
    if statement.label not in table.columns:
        raise SqlSyntaxError(f"The query has no column {statement.label!r} to use as the LABEL; its columns: "
                             f"{', '.join(table.columns)}.", statement.text, statement.positions["label"])
    column = table.columns.index(statement.label)
    labels = [label_text(row[column]) for row in table.rows]
    y = encode_labels(labels, model.data.class_names, table.origin)
    x = feature_matrix(table, model.features)
    names = select_members(model.run, None)
    return {
        "run_dir": str(store.path(statement.model)),
        "split": "query",
        "items": len(y),
        "class_names": model.data.class_names,
        "members": names,
        "classification": classification_scores(model.run, _stream(model, x, y), names, progress=progress),
        "retrieval": None,
    }
