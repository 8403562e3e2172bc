"""Run one statement of the SQL interface (``peerlearn sql`` and ``peerlearn.sql.run``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from peerlearn.data.sql_read import dialect_of
from peerlearn.errors import ConfigError
from peerlearn.sql.statements import (EvaluateStatement, PredictStatement, ShowTrainStatement, TrainStatement,
                                      parse_statement)
from peerlearn.sql.store import ModelStore
from peerlearn.run_files import CONFIG_NAME


@dataclass
class SqlResult:
    """What a statement did: ``kind`` (train, predict, evaluate, show), the model, a text report for the
    terminal and the details (train: summary and features; predict: table, rows, columns; evaluate: the
    ``peerlearn evaluate`` result; show: statement and config)."""

    kind: str
    model: str
    text: str
    run_dir: Optional[Path] = None
    details: dict[str, Any] = field(default_factory=dict)


def database_url(db: Optional[str]) -> str:
    """A SQLAlchemy-style URL; a plain file path means that SQLite file."""
    if not db:
        raise ConfigError("This statement reads a database: give its URL with --db (e.g. --db sqlite:///demo.db, "
                          "--db postgresql+psycopg://user@host/name) or db= in Python.")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", db):
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def run(statement: str, db: Optional[str] = None, models: Union[str, Path, None] = None,
        overwrite: bool = False, trust_code: bool = False, progress: str = "off") -> SqlResult:
    """Parse and run one statement on the database ``db``, with the model store ``models`` (default
    ``$PEERLEARN_MODELS`` or ``./models``). ``overwrite`` lets TO TRAIN replace a model and TO PREDICT a table.
    ``trust_code`` lets the statement's WITH clause, and stored models that are not signed with your key, name
    code (a ``package.module:callable`` model); without it such a statement is refused (``peerlearn.trust``).
    ``progress`` (``auto``, ``on``, ``off``) shows the reading, predicting and writing of TO PREDICT and TO
    EVALUATE (``peerlearn.progress``; training logs its epochs either way).

        import peerlearn.sql
        peerlearn.sql.run("SELECT * FROM wine TO TRAIN mutual WITH train.epochs = 30 LABEL cultivar "
                          "INTO wine_dml", db="sqlite:///demo.db")
    """
    store = ModelStore(models)
    if re.match(r"\s*SHOW\b", statement, re.IGNORECASE):
        parsed = parse_statement(statement)
        return show_train(parsed, store)
    url = database_url(db)
    parsed = parse_statement(statement, dialect_of(url))
    if isinstance(parsed, TrainStatement):
        return train(parsed, url, store, overwrite, trust_code)
    if isinstance(parsed, PredictStatement):
        from peerlearn.sql.prediction import run_predict

        done = run_predict(parsed, url, store, overwrite, trust_code, progress=progress)
        text = (f"wrote {done['rows']} rows to the table {done['table']} ({', '.join(done['columns'])}), "
                f"predicted by {done['predicted_by']} of the model {parsed.model}")
        return SqlResult("predict", parsed.model, text, store.path(parsed.model), done)
    if isinstance(parsed, EvaluateStatement):
        from peerlearn.evaluate.printing import format_evaluation
        from peerlearn.sql.prediction import run_evaluate

        result = run_evaluate(parsed, url, store, trust_code, progress=progress)
        return SqlResult("evaluate", parsed.model, format_evaluation(result), store.path(parsed.model), result)
    raise ConfigError(f"Unsupported statement {type(parsed).__name__}.")  # parse_statement returns no other


def train(statement: TrainStatement, url: str, store: ModelStore, overwrite: bool, trust_code: bool = False
          ) -> SqlResult:
    from peerlearn.api import train as train_run
    from peerlearn.data.tabular import describe_left_out
    from peerlearn.sql.training import build_config, choose_features
    from peerlearn.tables import format_summary

    store.check_free(statement.model, overwrite)
    features, left_out = choose_features(statement, url)
    config = build_config(statement, url, features, store, trust_code)
    result = train_run(config, out=store.staging(), trust_code=trust_code)
    run_dir = store.publish(result.run_dir, statement.model, overwrite)
    data = result.recipe.data
    info = {"statement": statement.text.strip(), "query": statement.select, "label": statement.label,
            "features": features, "left_out": left_out, "mean": data.mean, "std": data.std}
    store.save_statement(statement.model, statement.text, info)
    lines = [f"features ({len(features)}): {', '.join(features)}"]
    if left_out:
        lines.append(f"left out: {describe_left_out(left_out)} (name columns with COLUMN to choose them)")
    lines += [format_summary(result.summary), f"\nmodel {statement.model}: {run_dir}"]
    return SqlResult("train", statement.model, "\n".join(lines), run_dir,
                     {"summary": result.summary, "features": features, "left_out": left_out})


def hide_password(text: str) -> str:
    """``scheme://user:secret@host`` shown as ``scheme://user:***@host``."""
    return re.sub(r"(://[^/:@\s]+:)[^@\s/]+@", r"\1***@", text)


def show_train(statement: ShowTrainStatement, store: ModelStore) -> SqlResult:
    from peerlearn.trust import read_records

    run_dir = store.require(statement.model)
    read_records(run_dir).check(CONFIG_NAME)  # an edited or damaged config is named, never shown as the model's
    text = store.statement(statement.model)
    config = hide_password((run_dir / CONFIG_NAME).read_text())
    lines = [f"-- model {statement.model}: {run_dir}",
             text if text is not None else "-- (not trained by a SQL statement)", "", "-- its config:", config.rstrip()]
    return SqlResult("show", statement.model, "\n".join(lines), run_dir, {"statement": text, "config": config})
