"""Read-only SQL for the ``tabular`` source: one SELECT, checked before it reaches the database, run on a
connection that cannot write.

Three guards, each enough on its own for the common mistakes:

1. **The statement.** ``check_read_query`` parses the text with sqlglot (in the database's dialect) and
   accepts exactly one query: a ``SELECT`` (with ``WITH`` common table expressions, ``UNION`` /
   ``INTERSECT`` / ``EXCEPT``) that contains no data-changing part anywhere (``INSERT`` / ``UPDATE`` /
   ``DELETE`` inside a CTE, ``SELECT ... INTO``, ``FOR UPDATE`` locks). ``DROP``, ``ATTACH``, ``PRAGMA``,
   several statements, and text sqlglot cannot parse are refused with ``ConfigError`` (exit 2) before any
   connection is opened.
2. **The connection.** SQLite files are opened with the URI ``file:...?mode=ro`` (a missing file is not
   created, nothing can be written) and an authorizer that allows reading only (PRAGMAs may be read, not
   set). Other databases run the query in a transaction declared ``READ ONLY`` (PostgreSQL, MySQL) that is
   rolled back afterwards.
3. **The end.** Nothing is committed: the transaction is rolled back and the connection closed.

sqlglot and SQLAlchemy come with ``pip install 'peerlearn[sql]'``. Without sqlglot, SQLite files are
still read through guard 2 (the authorizer refuses every write and ``ATTACH``); other databases need it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, Optional

from peerlearn.errors import ConfigError

INSTALL_HINT = "pip install 'peerlearn[sql]'"

# sqlglot dialect of each URL scheme (the part before '+driver'); others are parsed as generic SQL
DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "mysql": "mysql",
            "mariadb": "mysql", "mssql": "tsql", "oracle": "oracle", "duckdb": "duckdb"}

# sqlite3 authorizer actions a read query needs; every other action (writes, ATTACH, PRAGMA, ...) is denied
_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                        getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def url_scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``."""
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def sqlite_path(url: str) -> Optional[str]:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL (None when not SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    rest = url[len("sqlite:"):]
    if not rest.startswith("///"):
        raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}; a SQLite URL is written "
                          "sqlite:///relative/path.db or sqlite:////absolute/path.db.")
    return rest[3:]


def dialect_of(url: str) -> Optional[str]:
    return DIALECTS.get(url_scheme(url))


def _forbidden_node_types(exp) -> tuple[type, ...]:
    names = ("DML", "DDL", "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "TruncateTable",
             "Into", "Command", "Attach", "Detach", "Pragma", "Set", "Copy", "Lock", "Transaction", "Commit",
             "Rollback", "Use", "LoadData")
    return tuple(t for t in (getattr(exp, name, None) for name in names) if isinstance(t, type))


class NotAReadQuery(ConfigError):
    """The text is not exactly one read query; ``reason`` says why (the message adds the key)."""

    def __init__(self, key: str, reason: str):
        self.reason = reason
        super().__init__(f"Invalid config: key {key!r}: {reason}.")


def parse_read_query(query: str, dialect: Optional[str], key: str):
    """The sqlglot tree of ``query`` when it is exactly one read-only query; ``NotAReadQuery`` otherwise."""
    import sqlglot
    from sqlglot import exp

    shown = query.strip() if len(query.strip()) <= 200 else query.strip()[:197] + "..."
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)  # sqlglot logs a warning when it falls back to an opaque Command
    try:
        trees = [tree for tree in sqlglot.parse(query, dialect=dialect) if tree is not None]
    except sqlglot.errors.SqlglotError as error:
        detail = str(error).strip().splitlines()[0]
        raise NotAReadQuery(key, f"the query {shown!r} is not valid SQL (syntax error: {detail})") from None
    finally:
        logger.setLevel(level)
    if not trees:
        raise NotAReadQuery(key, "the query is empty; give a SELECT query")
    if len(trees) > 1:
        raise NotAReadQuery(key, f"the text {shown!r} holds {len(trees)} statements; only a single SELECT query "
                                 "is run")
    tree = trees[0]
    while isinstance(tree, exp.Subquery) and isinstance(tree.this, exp.Query):  # (SELECT ...)
        tree = tree.this
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        what = tree.key.upper() if tree.key != "command" else str(tree.this).upper()
        raise NotAReadQuery(key, f"the statement {shown!r} is {what}, not a SELECT; databases are only read "
                                 "(a single SELECT, optionally with WITH or UNION)")
    forbidden = _forbidden_node_types(exp)
    for node in tree.walk():
        if isinstance(node, forbidden):
            part = "SELECT ... INTO" if isinstance(node, exp.Into) else node.key.upper()
            raise NotAReadQuery(key, f"the query {shown!r} contains {part}, which writes or locks; databases are "
                                     "only read")
    return tree


def check_read_query(query: str, url: str, key: str, required: bool) -> bool:
    """Refuse anything but one read query (see the module doc). Returns False when sqlglot is missing and
    ``required`` is false (the caller's connection then has to guard alone)."""
    try:
        import sqlglot  # noqa: F401
    except ImportError:
        if required:
            raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}; checking that a "
                              f"query only reads needs sqlglot: {INSTALL_HINT}.") from None
        return False
    parse_read_query(query, dialect_of(url), key)
    return True


# ------------------------------------------------------------------ connections
def _sqlite_authorizer(action: int, first: Any, second: Any, *_: Any) -> int:
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and second is None:  # reading a setting (SQLAlchemy reads a few)
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def open_sqlite_read_only(path: str) -> sqlite3.Connection:
    """A connection to an existing SQLite file that can only read (URI mode=ro and an authorizer)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Invalid config: key 'data.options.url' names the SQLite database {path!r}, "
                          "which does not exist.")
    try:
        connection = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as error:
        raise ConfigError(f"Invalid config: key 'data.options.url': cannot open the SQLite database {path!r}: "
                          f"{error}.") from None
    connection.set_authorizer(_sqlite_authorizer)
    return connection


def sqlite_read(path: str, query: str, key: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``query`` on the SQLite file ``path``, read-only."""
    connection = open_sqlite_read_only(path)
    try:
        cursor = connection.execute(query)
        if cursor.description is None:
            raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} returns no rows (it is not a SELECT).")
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except (sqlite3.Error, sqlite3.Warning) as error:
        raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} failed on {path!r}: {error}.") from None
    finally:
        connection.rollback()
        connection.close()
    return columns, rows


def _sqlalchemy():
    try:
        import sqlalchemy
    except ImportError:
        raise ConfigError(f"Invalid config: key 'data.options.url': databases other than SQLite need SQLAlchemy "
                          f"and the database's driver: {INSTALL_HINT}.") from None
    return sqlalchemy


def create_engine(url: str, read_only: bool):
    """A SQLAlchemy engine for ``url``; SQLite files are opened through ``open_sqlite_read_only`` when
    ``read_only``."""
    sqlalchemy = _sqlalchemy()
    path = sqlite_path(url) if url_scheme(url) == "sqlite" else None
    try:
        if path is not None and read_only:
            return sqlalchemy.create_engine("sqlite://", creator=lambda: open_sqlite_read_only(path),
                                            poolclass=sqlalchemy.pool.NullPool)
        return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as error:
        raise ConfigError(f"Invalid config: key 'data.options.url' has the value {url!r}, which SQLAlchemy "
                          f"cannot open: {error}.") from None


def begin_read_only(connection, url: str) -> None:
    """Declare the connection's transaction read-only where the database supports it."""
    if url_scheme(url) in ("postgresql", "postgres", "mysql", "mariadb"):
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def sqlalchemy_read(url: str, query: str, key: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of ``query`` through SQLAlchemy, in a read-only transaction rolled back after."""
    sqlalchemy = _sqlalchemy()
    engine = create_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            try:
                begin_read_only(connection, url)
                result = connection.execute(sqlalchemy.text(query))
                if not result.returns_rows:
                    raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} returns no rows "
                                      "(it is not a SELECT).")
                columns = list(result.keys())
                rows = [tuple(row) for row in result.fetchall()]
            finally:
                connection.rollback()
    except sqlalchemy.exc.SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise ConfigError(f"Invalid config: key {key!r}: the query {query!r} failed: {message}.") from None
    finally:
        engine.dispose()
    return columns, rows
