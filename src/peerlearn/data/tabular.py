"""Tabular data: rows of a CSV file, or of a SQL query run on a database, with named columns.

One column is the label, the feature columns must hold numbers (default: every numeric column but the label,
leaving out identifiers: integer columns with a different value in every row, which tell rows apart and
can leak the label; they are used only when named). Labels may
be strings or numbers; they become class indices 0..C−1 in sorted order (numerically when every label
is a number) and the original values are kept as the class names. Features become a float32 [N, F]
tensor; ``load_data`` standardises them with the training split's per-column mean and standard
deviation (``data.normalize``), and models that take ``in_features`` (``mlp``) read them.

Where the rows come from (``data.path`` or ``data.options.url``) and which columns to use are
``data.options`` keys, checked by ``TabularOptions``. SQLite URLs (``sqlite:///file.db``) are read with
the standard library's ``sqlite3``; other URLs (PostgreSQL, MySQL, ...) need SQLAlchemy
(``pip install 'peerlearn[sql]'``). Databases are only read: a query must be one SELECT and runs on a
read-only connection (``peerlearn.data.sql_read``). See docs/tabular.md.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerlearn.data.raw import RawDataset
from peerlearn.data.splits import stratified_permutation
from peerlearn.data.sql_read import check_read_query, sqlalchemy_read, sqlite_path, sqlite_read
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


def run_query(url: str, query: str, client: str, key: str) -> Table:
    """Rows and column names of ``query`` on the database at ``url``, read-only (``peerlearn.data.sql_read``):
    the text must be a single SELECT, checked before any connection is opened."""
    path = sqlite_path(url)
    stdlib = client == "sqlite3" or (client == "auto" and path is not None)
    if stdlib and path is None:
        raise ConfigError(f"Invalid config: key 'data.options.sql_client' is sqlite3, but the URL {url!r} is not "
                          "a sqlite:/// URL.")
    check_read_query(query, url, key, required=not stdlib)  # without sqlglot, SQLite's authorizer guards alone
    columns, rows = sqlite_read(path, query, key) if stdlib else sqlalchemy_read(url, query, key)
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


def label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def _class_order(labels: set[str]) -> list[str]:
    """Sorted class names: numerically when every label is a number, else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value).strip())
        return True
    except ValueError:
        return False


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def column_kind(table: Table, index: int) -> str:
    """'text' when some cell holds text that is not a number; 'identifier' when every cell is an integer and no
    two rows share one (an id: it tells rows apart, and in a sorted table it leaks the label); else 'number'.
    Empty cells count as neither (they are reported as missing values when the column is used)."""
    values = [row[index] for row in table.rows if not _is_blank(row[index])]
    if any(not _is_number(v) for v in values):
        return "text"
    numbers = [float(v) for v in values]
    if (len(table.rows) > 1 and len(numbers) == len(table.rows) and all(math.isfinite(v) and v.is_integer()
                                                                       for v in numbers)
            and len(set(numbers)) == len(numbers)):
        return "identifier"
    return "number"


LEFT_OUT_REASONS = {
    "text": "holds text",
    "identifier": "has a different integer in every row (an identifier?)",
}


def default_features(table: Table, label: str) -> tuple[list[str], dict[str, str]]:
    """The feature columns used when none are named: every numeric column but the label and identifiers.

    Returns the features and, for each column left out, why (``LEFT_OUT_REASONS``).
    """
    features, left_out = [], {}
    for index, column in enumerate(table.columns):
        if column == label:
            continue
        kind = column_kind(table, index)
        if kind == "number":
            features.append(column)
        else:
            left_out[column] = LEFT_OUT_REASONS[kind]
    return features, left_out


def describe_left_out(left_out: dict[str, str]) -> str:
    return "; ".join(f"{column!r} {reason}" for column, reason in left_out.items())


def select_columns(table: Table, options: TabularOptions) -> tuple[list[str], int, list[int]]:
    """Feature names, the label's column index and the features' column indices (errors name what is missing).

    Without ``features`` every numeric column but the label is one, except identifier columns (a different
    integer in every row), which are used only when named; the columns left out are reported as a warning.
    """
    available = ", ".join(table.columns)
    if options.label not in table.columns:
        raise ConfigError(f"Invalid config: key 'data.options.label' has the value {options.label!r}, but the "
                          f"{table.origin} has no such column; its columns: {available}.")
    if options.features is not None:
        features = options.features
    else:
        features, left_out = default_features(table, options.label)
        if left_out:
            warnings.warn(f"The {table.origin}: columns left out of the features: {describe_left_out(left_out)}. "
                          "Name the feature columns in data.options.features to choose them yourself.",
                          stacklevel=2)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ConfigError(f"Invalid config: key 'data.options.features' names the column(s) {', '.join(missing)}, "
                          f"which the {table.origin} does not have; its columns: {available}.")
    if not features:
        raise ConfigError("Invalid config: key 'data.options.features': no numeric feature column is left besides "
                          f"the label; the {table.origin} has: {available}.")
    if options.label in features:
        raise ConfigError(f"Invalid config: key 'data.options.features' includes the label column {options.label!r}.")
    return features, table.columns.index(options.label), [table.columns.index(c) for c in features]


def feature_matrix(table: Table, features: Sequence[str]) -> torch.Tensor:
    """The named feature columns of every row as float32 [N, F] (for prediction: no label needed)."""
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise DataError(f"The {table.origin} has no column(s) {', '.join(missing)}, which the model needs as "
                        f"features; its columns: {', '.join(table.columns)}.")
    index = [table.columns.index(c) for c in features]
    values = [[_number(row[i], features[k], n, table.origin) for k, i in enumerate(index)]
              for n, row in enumerate(table.rows, start=1)]
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), len(features))


def table_tensors(table: Table, options: TabularOptions) -> tuple[torch.Tensor, list[str], list[str]]:
    """Features [N, F] float32 and the label text of every row (and the feature names)."""
    features, label_index, feature_index = select_columns(table, options)
    if not table.rows:
        raise DataError(f"The {table.origin} gives no rows.")
    values = [[_number(row[i], features[k], n, table.origin) for k, i in enumerate(feature_index)]
              for n, row in enumerate(table.rows, start=1)]
    labels = [label_text(row[label_index]) for row in table.rows]
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
