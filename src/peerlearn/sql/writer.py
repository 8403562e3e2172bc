"""The one write of the SQL interface: a new table, created and filled in a single transaction.

If the table exists, nothing is written unless ``overwrite`` is set (then the old table is dropped in the
same transaction, so readers see the old table or the new one, never a half-filled one). ``TO PREDICT``
writes through ``write_prediction_table``, which moreover replaces only tables peerlearn created for
predictions and never a table its own query reads (``peerlearn.sql.ownership``); ``write_table`` without
those rules is the demo's (``peerlearn sql --demo-db``), which makes its own example tables. SQLite files
are written with the standard library (the transaction opened with ``BEGIN IMMEDIATE``); other databases
through SQLAlchemy (``engine.begin()``).

Column kinds: ``integer``, ``real`` or ``text``.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from peerlearn.data.sql_read import begin_read_only, create_engine, url_scheme
from peerlearn.data.tabular import sqlite_path
from peerlearn.errors import ConfigError
from peerlearn.sql import ownership

POSTGRES = ("postgresql", "postgres")
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


@contextmanager
def _sqlite_transaction(path: str, table: str, failed: str):
    """One immediate-mode transaction on an existing SQLite file: committed at the end, rolled back on any error;
    an SQLite error becomes a ConfigError naming the table (``failed`` ends its message)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"The SQLite database {path!r} does not exist.")
    connection = sqlite3.connect(file.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        connection.execute("COMMIT")
    except BaseException as error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise ConfigError(f"Cannot write the table {table!r} in {path!r}: {error}{failed}") from None
        raise
    finally:
        connection.close()


def _create_filled_table(connection, table: str, columns, rows, comment: str = "") -> None:
    spec = ", ".join(f"{quote(name)} {SQLITE_TYPES[kind]}" for name, kind in columns)
    connection.execute(f"CREATE TABLE {quote(table)} ({spec}{comment})")
    marks = ", ".join("?" * len(columns))
    connection.executemany(f"INSERT INTO {quote(table)} VALUES ({marks})", [tuple(row) for row in rows])


def _write_sqlite(path: str, table: str, columns, rows, overwrite: bool) -> None:
    with _sqlite_transaction(path, table, ".") as connection:
        exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                                    (table,)).fetchone()
        if exists and not overwrite:
            raise ConfigError(_exists_message(table))
        if exists:
            connection.execute(f"DROP TABLE {quote(table)}")
        _create_filled_table(connection, table, columns, rows)


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


# ------------------------------------------------------------------ TO PREDICT's tables
def check_prediction_target(url: str, table: str, schema: Optional[str], select: str) -> None:
    """Refuse, before any work, a target that is peerlearn's record or a table ``select`` reads
    (``peerlearn.sql.ownership``); ``write_prediction_table`` checks again inside its transaction."""
    if table.lower() == ownership.REGISTRY:
        raise ownership.refuse_registry(table)
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    if path is not None:
        if table.lower() in ownership.sqlite_tables_read(path, select):
            raise ownership.refuse_read(table, schema)
        return
    if url_scheme(url) not in POSTGRES:
        if ownership.named_in(select, table):
            raise ownership.refuse_read(table, schema)
        return
    import sqlalchemy

    engine = create_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            try:
                begin_read_only(connection, url)
                reads = ownership.postgres_reads_table(connection, select, table, schema)
            finally:
                connection.rollback()
    except sqlalchemy.exc.SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"Cannot check what the query before TO reads: {message}.") from None
    finally:
        engine.dispose()
    if reads:
        raise ownership.refuse_read(table, schema)


def write_prediction_table(url: str, table: str, schema: Optional[str], columns: Sequence[tuple[str, str]],
                           rows: Sequence[Sequence[Any]], select: str, overwrite: bool = False) -> None:
    """Create the prediction table ``table`` and record it as peerlearn's, in one transaction. An existing
    table is replaced only when ``overwrite`` is set and peerlearn made it (its record and fingerprint match);
    a table that ``select`` reads, or any other table, is refused (``peerlearn.sql.ownership``)."""
    if table.lower() == ownership.REGISTRY:
        raise ownership.refuse_registry(table)
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    if path is not None:
        if schema is not None:
            raise ConfigError(f"SQLite has no schemas: write TO PREDICT {table}.<column> without {schema!r}.")
        if table.lower() in ownership.sqlite_tables_read(path, select):
            raise ownership.refuse_read(table, None)
        _write_sqlite_prediction(path, table, columns, rows, overwrite)
    else:
        _write_sqlalchemy_prediction(url, table, schema, columns, rows, select, overwrite)


def _write_sqlite_prediction(path: str, table: str, columns, rows, overwrite: bool) -> None:
    registry = quote(ownership.REGISTRY)
    with _sqlite_transaction(path, table, "; nothing was changed.") as connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {registry} (table_name TEXT PRIMARY KEY, "
                           "fingerprint TEXT NOT NULL, created TEXT NOT NULL)")
        existing = connection.execute("SELECT type, sql FROM sqlite_master WHERE type IN ('table', 'view') AND "
                                      "name = ? COLLATE NOCASE", (table,)).fetchone()
        if existing is not None:
            record = connection.execute(f"SELECT fingerprint FROM {registry} WHERE table_name = ?",
                                        (table.lower(),)).fetchone()
            if existing[0] != "table" or record is None or f"/* {record[0]} */" not in (existing[1] or ""):
                raise ownership.refuse_foreign(table, None)
            if not overwrite:
                raise ConfigError(_exists_message(table))
            connection.execute(f"DROP TABLE {quote(table)}")
        mark = ownership.token()
        _create_filled_table(connection, table, columns, rows, comment=f" /* {mark} */")
        connection.execute(f"INSERT OR REPLACE INTO {registry} VALUES (?, ?, datetime('now'))", (table.lower(), mark))


def _fingerprint(connection, table: str, schema: Optional[str], postgres: bool) -> Optional[str]:
    """PostgreSQL: the table's object id (a table made again gets another); elsewhere None (the record alone)."""
    if not postgres:
        return None
    import sqlalchemy

    oid = connection.execute(sqlalchemy.text("SELECT to_regclass(:name)::oid"),
                             {"name": ownership.qualified(table, schema)}).scalar()
    return None if oid is None else str(oid)


def _write_sqlalchemy_prediction(url: str, table: str, schema: Optional[str], columns, rows, select: str,
                                 overwrite: bool) -> None:
    import sqlalchemy

    postgres = url_scheme(url) in POSTGRES
    types = {"integer": sqlalchemy.BigInteger, "real": sqlalchemy.Double, "text": sqlalchemy.Text}
    metadata = sqlalchemy.MetaData()
    definition = sqlalchemy.Table(table, metadata, *[sqlalchemy.Column(name, types[kind]()) for name, kind in columns],
                                  schema=schema)
    registry = sqlalchemy.Table(ownership.REGISTRY, metadata,
                                sqlalchemy.Column("table_name", sqlalchemy.Text, primary_key=True),
                                sqlalchemy.Column("fingerprint", sqlalchemy.Text),
                                sqlalchemy.Column("created", sqlalchemy.Text), schema=schema)
    engine = create_engine(url, read_only=False)
    name = ownership.shown(table, schema)
    try:
        with engine.begin() as connection:
            reads = (ownership.postgres_reads_table(connection, select, table, schema) if postgres
                     else ownership.named_in(select, table))
            if reads:
                raise ownership.refuse_read(table, schema)
            registry.create(connection, checkfirst=True)
            inspector = sqlalchemy.inspect(connection)
            if inspector.has_table(table, schema=schema) or table in inspector.get_view_names(schema=schema):
                record = connection.execute(sqlalchemy.select(registry.c.fingerprint)
                                            .where(registry.c.table_name == table)).fetchone()
                current = _fingerprint(connection, table, schema, postgres)
                if (record is None or table in inspector.get_view_names(schema=schema)
                        or (current is not None and record[0] != current)):
                    raise ownership.refuse_foreign(table, schema)
                if not overwrite:
                    raise ConfigError(_exists_message(name))
                definition.drop(connection)
            definition.create(connection)
            if rows:
                names = [column for column, _ in columns]
                connection.execute(definition.insert(), [dict(zip(names, row)) for row in rows])
            connection.execute(registry.delete().where(registry.c.table_name == table))
            connection.execute(registry.insert().values(
                table_name=table, fingerprint=_fingerprint(connection, table, schema, postgres),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    except sqlalchemy.exc.SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"Cannot write the table {name!r}: {message}; nothing was changed.") from None
    finally:
        engine.dispose()
