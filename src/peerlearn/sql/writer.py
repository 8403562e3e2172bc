"""The one write of the SQL interface: a new table, created and filled in a single transaction.

If the table exists, nothing is written unless ``overwrite`` is set (then the old table is dropped in the
same transaction, so readers see the old table or the new one, never a half-filled one). SQLite files
are written with the standard library (the transaction opened with ``BEGIN IMMEDIATE``); other databases
through SQLAlchemy (``engine.begin()``).

Column kinds: ``integer``, ``real`` or ``text``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional, Sequence

from peerlearn.data.sql_read import create_engine, url_scheme
from peerlearn.data.tabular import sqlite_path
from peerlearn.errors import ConfigError

SQLITE_TYPES = {"integer": "INTEGER", "real": "REAL", "text": "TEXT"}


def value_kind(values: Sequence[Any]) -> str:
    """The column kind that holds every value (None values aside): integer, real or text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "integer"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "real"
    return "text"


def _exists_message(name: str) -> str:
    return (f"The table {name!r} already exists; nothing was written. Choose another table name after TO PREDICT, "
            "or replace it with WITH overwrite = true (or --overwrite).")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_table(url: str, table: str, schema: Optional[str], columns: Sequence[tuple[str, str]],
                rows: Sequence[Sequence[Any]], overwrite: bool = False) -> None:
    """Create ``table`` with ``columns`` (name, kind) and insert ``rows``, all in one transaction."""
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    if path is not None:
        if schema is not None:
            raise ConfigError(f"SQLite has no schemas: write TO PREDICT {table}.<column> without {schema!r}.")
        _write_sqlite(path, table, columns, rows, overwrite)
    else:
        _write_sqlalchemy(url, table, schema, columns, rows, overwrite)


def _write_sqlite(path: str, table: str, columns, rows, overwrite: bool) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"The SQLite database {path!r} does not exist.")
    connection = sqlite3.connect(file.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                                    (table,)).fetchone()
        if exists and not overwrite:
            raise ConfigError(_exists_message(table))
        if exists:
            connection.execute(f"DROP TABLE {quote(table)}")
        spec = ", ".join(f"{quote(name)} {SQLITE_TYPES[kind]}" for name, kind in columns)
        connection.execute(f"CREATE TABLE {quote(table)} ({spec})")
        marks = ", ".join("?" * len(columns))
        connection.executemany(f"INSERT INTO {quote(table)} VALUES ({marks})", [tuple(row) for row in rows])
        connection.execute("COMMIT")
    except BaseException as error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise ConfigError(f"Cannot write the table {table!r} in {path!r}: {error}.") from None
        raise
    finally:
        connection.close()


def _write_sqlalchemy(url: str, table: str, schema: Optional[str], columns, rows, overwrite: bool) -> None:
    import sqlalchemy

    types = {"integer": sqlalchemy.BigInteger, "real": sqlalchemy.Double, "text": sqlalchemy.Text}
    definition = sqlalchemy.Table(table, sqlalchemy.MetaData(),
                                  *[sqlalchemy.Column(name, types[kind]()) for name, kind in columns], schema=schema)
    engine = create_engine(url, read_only=False)
    shown = f"{schema}.{table}" if schema else table
    try:
        with engine.begin() as connection:
            if sqlalchemy.inspect(connection).has_table(table, schema=schema):
                if not overwrite:
                    raise ConfigError(_exists_message(shown))
                definition.drop(connection)
            definition.create(connection)
            if rows:
                names = [name for name, _ in columns]
                connection.execute(definition.insert(), [dict(zip(names, row)) for row in rows])
    except sqlalchemy.exc.SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"Cannot write the table {shown!r}: {message}.") from None
    finally:
        engine.dispose()
