"""Tabular data: rows of a CSV file, or of a SQL query run on a database, with named columns.

One column is the label, the feature columns (default: all the others) must hold numbers. Labels may
be strings or numbers; they become class indices 0..C−1 in sorted order (numerically when every label
is a number) and the original values are kept as the class names. Features become a float32 [N, F]
tensor; ``load_data`` standardises them with the training split's per-column mean and standard
deviation (``data.normalize``), and models that take ``in_features`` (``mlp``) read them.

Where the rows come from (``data.path`` or ``data.options.url``) and which columns to use are
``data.options`` keys, checked by ``TabularOptions``. SQLite URLs (``sqlite:///file.db``) are read with
the standard library's ``sqlite3``; other URLs (PostgreSQL, MySQL, ...) need SQLAlchemy
(``pip install 'peerlearn[sql]'``). See docs/tabular.md.
"""

from __future__ import annotations

import csv
import math
import sqlite3
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerlearn.data.raw import RawDataset
from peerlearn.data.splits import stratified_permutation
from peerlearn.errors import ConfigError, DataError

TABULAR_SPLIT_SEED = 1234  # fixed: a table without its own test part always gives the same test rows


class TabularOptions(BaseModel):
    """``data.options`` of the ``tabular`` source."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="the label column")
    features: Optional[list[str]] = Field(None, description="feature columns (default: every column but the label)")
    url: Optional[str] = Field(None, description="database URL, e.g. sqlite:///data/iris.db (instead of data.path)")
    query: Optional[str] = Field(None, description="SQL query giving the training rows")
    table: Optional[str] = Field(None, description="shorthand for the query SELECT * FROM <table>")
    test_query: Optional[str] = Field(None, description="SQL query giving the test rows")
    test_path: Optional[str] = Field(None, description="CSV file with the test rows")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified test hold-out when no test rows are given")
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator")
    sql_client: Literal["auto", "sqlite3", "sqlalchemy"] = Field(
        "auto", description="auto: sqlite3 for sqlite: URLs, SQLAlchemy for the others")


class Table:
    """Column names and rows as read, before conversion."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], origin: str):
        self.columns = [str(c) for c in columns]
        self.rows = rows
        self.origin = origin


# ------------------------------------------------------------------ reading
def read_csv(path: str, delimiter: str, key: str) -> Table:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Invalid config: key {key!r} has the value {path!r}, which is not a file.")
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"The CSV file {path!r} is empty; its first line must name the columns.")
            rows = [row for row in reader if row]
        except UnicodeDecodeError as error:
            raise DataError(f"The CSV file {path!r} is not UTF-8 text (byte offset {error.start} of a chunk near "
                            f"line {reader.line_num + 1}); save it as UTF-8.") from None
        except csv.Error as error:  # e.g. a field larger than csv.field_size_limit(), a NUL byte
            raise DataError(f"The CSV file {path!r} cannot be parsed at line {reader.line_num}: {error}.") from None
    width = len(header)
    for number, row in enumerate(rows, start=2):
        if len(row) != width:
            raise DataError(f"The CSV file {path!r}: line {number} has {len(row)} fields, the header has {width}.")
    return Table([h.strip() for h in header], rows, f"CSV file {path!r}")


def sqlite_path(url: str) -> Optional[str]:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL (None when not SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    rest = url[len("sqlite:"):]
    if not rest.startswith("///"):
        raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}; a SQLite URL is written "
                          "sqlite:///relative/path.db or sqlite:////absolute/path.db.")
    return rest[3:]


def run_query(url: str, query: str, client: str, key: str) -> Table:
    """Rows and column names of ``query`` on the database at ``url``."""
    path = sqlite_path(url)
    if client == "sqlite3" or (client == "auto" and path is not None):
        if path is None:
            raise ConfigError(f"Invalid config: key 'data.options.sql_client' is sqlite3, but the URL {url!r} is not "
                              "a sqlite:/// URL.")
        return _sqlite_query(path, query, key)
    return _sqlalchemy_query(url, query, key)


def _sqlite_query(path: str, query: str, key: str) -> Table:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Invalid config: key 'data.options.url' names the SQLite database {path!r}, "
                          "which does not exist.")
    try:  # read-only: a query cannot change the database
        connection = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise ConfigError(f"Invalid config: key 'data.options.url': cannot open the SQLite database {path!r}: "
                          f"{error}.") from None
    try:
        cursor = connection.execute(query)
        if cursor.description is None:
            raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} returns no rows (it is not a SELECT).")
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except sqlite3.Error as error:
        raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} failed on {path!r}: {error}.") from None
    finally:
        connection.close()
    return Table(columns, rows, f"query {query!r}")


def _sqlalchemy_query(url: str, query: str, key: str) -> Table:
    try:
        import sqlalchemy
    except ImportError:
        raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}; databases other than "
                          "SQLite need SQLAlchemy and the database's driver: pip install 'peerlearn[sql]'.") from None
    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as error:
        raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}, which SQLAlchemy "
                          f"cannot open: {error}.") from None
    try:
        with engine.connect() as connection:
            result = connection.execute(sqlalchemy.text(query))
            if not result.returns_rows:
                raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} returns no rows "
                                  "(it is not a SELECT).")
            columns = list(result.keys())
            rows = [tuple(row) for row in result.fetchall()]
    except sqlalchemy.exc.SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} failed: {message}.") from None
    finally:
        engine.dispose()
    return Table(columns, rows, f"query {query!r}")


# ------------------------------------------------------------------ conversion
def _number(value: Any, column: str, row: int, origin: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = "" if value is None else str(value).strip()
        try:
            number = float(text)
        except ValueError:
            what = "is empty" if text == "" else f"holds {value!r}"
            raise DataError(f"The {origin}: column {column!r}, row {row} {what}; tabular features must be "
                            "numbers (fill or drop missing values, encode categories as numbers).") from None
    if not math.isfinite(number):
        raise DataError(f"The {origin}: column {column!r}, row {row} holds {value!r}; features must be finite.")
    return number


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def _class_order(labels: set[str]) -> list[str]:
    """Sorted class names: numerically when every label is a number, else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def select_columns(table: Table, options: TabularOptions) -> tuple[list[str], int, list[int]]:
    """Feature names, the label's column index and the features' column indices (errors name what is missing)."""
    available = ", ".join(table.columns)
    if options.label not in table.columns:
        raise ConfigError(f"Invalid config: key 'data.options.label' has the value {options.label!r}, but the "
                          f"{table.origin} has no such column; its columns: {available}.")
    features = options.features if options.features is not None else [c for c in table.columns if c != options.label]
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ConfigError(f"Invalid config: key 'data.options.features' names the column(s) {', '.join(missing)}, "
                          f"which the {table.origin} does not have; its columns: {available}.")
    if not features:
        raise ConfigError("Invalid config: key 'data.options.features': no feature column is left besides the label.")
    if options.label in features:
        raise ConfigError(f"Invalid config: key 'data.options.features' includes the label column {options.label!r}.")
    return features, table.columns.index(options.label), [table.columns.index(c) for c in features]


def table_tensors(table: Table, options: TabularOptions) -> tuple[torch.Tensor, list[str], list[str]]:
    """Features [N, F] float32 and the label text of every row (and the feature names)."""
    features, label_index, feature_index = select_columns(table, options)
    if not table.rows:
        raise DataError(f"The {table.origin} gives no rows.")
    values = [[_number(row[i], features[k], n, table.origin) for k, i in enumerate(feature_index)]
              for n, row in enumerate(table.rows, start=1)]
    labels = [_label_text(row[label_index]) for row in table.rows]
    empty = [n for n, label in enumerate(labels, start=1) if label == ""]
    if empty:
        raise DataError(f"The {table.origin}: the label column {options.label!r} is empty in row {empty[0]} "
                        f"(and {len(empty) - 1} more).")
    return torch.tensor(values, dtype=torch.float32), labels, features


def encode_labels(labels: list[str], classes: list[str], origin: str) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise DataError(f"The {origin} has labels that the training rows do not: {', '.join(unknown[:5])}.")
    return torch.tensor([index[label] for label in labels], dtype=torch.int64)


# ------------------------------------------------------------------ the source
def parse_options(options: dict[str, Any]) -> TabularOptions:
    try:
        return TabularOptions(**options)
    except ValidationError as error:
        first = error.errors()[0]
        key = "data.options." + ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(TabularOptions.model_fields)
            raise ConfigError(f"Invalid config: key {key!r} is not an option of the tabular source; "
                              f"allowed: {allowed}.") from None
        if first["type"] == "missing":
            raise ConfigError(f"Invalid config: key {key!r} is required by the tabular source (the label column).") \
                from None
        raise ConfigError(f"Invalid config: key {key!r} has the value {first.get('input')!r}: "
                          f"{first['msg'].removeprefix('Value error, ')}.") from None


def read_training_table(config, options: TabularOptions) -> Table:
    if config.path and options.url:
        raise ConfigError("Invalid config: the tabular source reads either a CSV file (data.path) or a database "
                          "(data.options.url), not both.")
    if config.path:
        if options.query or options.table or options.test_query:
            raise ConfigError("Invalid config: keys 'data.options.query', 'table' and 'test_query' need a database "
                              "(data.options.url); data.path is a CSV file.")
        return read_csv(config.path, options.delimiter, "data.path")
    if not options.url:
        raise ConfigError("Invalid config: the tabular source needs data.path (a CSV file) or data.options.url "
                          "(a database URL such as sqlite:///data.db) with data.options.query.")
    if bool(options.query) == bool(options.table):
        raise ConfigError("Invalid config: with data.options.url give exactly one of data.options.query "
                          "(a SELECT) or data.options.table (a table name).")
    if options.table is not None:
        if not options.table.replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"Invalid config: key 'data.options.table' has the value {options.table!r}; a table "
                              "name has letters, digits, '_' and '.' only (write a query for anything else).")
        return run_query(options.url, f"SELECT * FROM {options.table}", options.sql_client, "data.options.table")
    return run_query(options.url, options.query, options.sql_client, "data.options.query")


def load_tabular(config) -> RawDataset:
    """The ``tabular`` source: train rows from data.path / a query, test rows given or held out."""
    options = parse_options(config.options)
    table = read_training_table(config, options)
    x, labels, features = table_tensors(table, options)
    classes = _class_order(set(labels))
    y = encode_labels(labels, classes, table.origin)
    if options.test_query or options.test_path:
        if options.test_query and options.test_path:
            raise ConfigError("Invalid config: give data.options.test_query or data.options.test_path, not both.")
        if options.test_query:
            if not options.url:
                raise ConfigError("Invalid config: key 'data.options.test_query' needs data.options.url.")
            test = run_query(options.url, options.test_query, options.sql_client, "data.options.test_query")
        else:
            test = read_csv(options.test_path, options.delimiter, "data.options.test_path")
        test_options = options.model_copy(update={"features": features})
        test_x, test_labels, _ = table_tensors(test, test_options)
        test_y = encode_labels(test_labels, classes, test.origin)
        train_x, train_y = x, y
    else:
        order = stratified_permutation(y, TABULAR_SPLIT_SEED)
        n_test = max(1, int(round(len(y) * options.test_fraction)))
        if n_test >= len(y):
            raise DataError(f"The {table.origin} has only {len(y)} rows: too few to hold out a test part.")
        test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
        train_x, train_y, test_x, test_y = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    return RawDataset(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, class_names=classes,
                      extras={"feature_names": features})
