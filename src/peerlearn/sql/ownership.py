"""Which tables ``TO PREDICT`` may write: only the ones it created itself, never one its query reads.

``SELECT * FROM wine TO PREDICT wine.cultivar WITH overwrite = true`` must not replace the user's data.
Two rules, checked on SQLite and PostgreSQL alike, with or without ``overwrite``:

1. **Not a table the SELECT reads.** The database itself says what the query reads, without running it:
   SQLite's authorizer reports every table (and the tables behind every view) while ``EXPLAIN`` compiles the
   query; PostgreSQL's ``EXPLAIN (VERBOSE, FORMAT JSON)`` names the schema and relation of every scan. Other
   databases fall back to the table's name appearing as a word in the query (stricter, never looser).
2. **Only tables peerlearn made for predictions.** Every table ``TO PREDICT`` creates is recorded in a table
   ``peerlearn_predictions`` (in the same database and schema) with a fingerprint of that very table: on
   SQLite a random token written into its ``CREATE TABLE`` text, on PostgreSQL its object id. An existing
   table that is not recorded, or whose fingerprint differs (dropped and made again by someone else), is
   refused; ``overwrite`` replaces only a recorded one.

The check, the drop, the new table, its rows and its record are one transaction: when anything fails the
database is as it was.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Optional

from peerlearn.errors import ConfigError

REGISTRY = "peerlearn_predictions"


def token() -> str:
    """A fresh fingerprint for a SQLite table (kept in its CREATE TABLE text as a comment)."""
    return f"peerlearn prediction {secrets.token_hex(8)}"


def shown(table: str, schema: Optional[str]) -> str:
    return f"{schema}.{table}" if schema else table


def refuse_read(table: str, schema: Optional[str]) -> ConfigError:
    return ConfigError(f"TO PREDICT would write {shown(table, schema)!r}, a table its own SELECT reads; nothing was "
                       "written (with or without overwrite, the data a query reads are never replaced). Name a new "
                       "table for the predictions, e.g. TO PREDICT "
                       f"{shown(table + '_predicted', schema)}.<column>.")


def refuse_foreign(table: str, schema: Optional[str]) -> ConfigError:
    return ConfigError(f"The table {shown(table, schema)!r} exists and was not created by peerlearn's TO PREDICT "
                       f"(it is not recorded in {REGISTRY}); nothing was written. peerlearn replaces only its own "
                       "prediction tables, with or without overwrite: name a new table, or drop this one yourself "
                       "if it is no longer needed.")


def refuse_registry(table: str) -> ConfigError:
    return ConfigError(f"{table!r} is the table where peerlearn records its prediction tables; predictions "
                       "cannot be written there.")


# ------------------------------------------------------------------ what a query reads
def sqlite_tables_read(path: str, select: str) -> set[str]:
    """Lower-cased names of the tables (and views) ``select`` reads on the SQLite file ``path``, the tables
    behind views included; the query is compiled (``EXPLAIN``), not run."""
    import sqlite3

    from peerlearn.data.sql_read import _sqlite_authorizer, open_sqlite_read_only

    read: set[str] = set()

    def authorizer(action: int, first: Any, second: Any, *rest: Any) -> int:
        if action == sqlite3.SQLITE_READ and first:
            read.add(str(first).lower())
        return _sqlite_authorizer(action, first, second, *rest)

    connection = open_sqlite_read_only(path)
    try:
        connection.set_authorizer(authorizer)
        connection.execute("EXPLAIN " + select).fetchall()
    except sqlite3.Error as error:
        raise ConfigError(f"The query before TO failed on {path!r}: {error}.") from None
    finally:
        connection.close()
    return read


def _plan_relations(node: Any, found: set[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        if "Relation Name" in node:
            found.add((node.get("Schema", ""), node["Relation Name"]))
        for value in node.values():
            _plan_relations(value, found)
    elif isinstance(node, list):
        for value in node:
            _plan_relations(value, found)


def postgres_reads_table(connection, select: str, table: str, schema: Optional[str]) -> bool:
    """Whether ``select`` reads ``schema.table`` (resolved on the search path when ``schema`` is None),
    from PostgreSQL's own plan of the query (``EXPLAIN`` plans it, nothing runs)."""
    import json

    import sqlalchemy

    target = connection.execute(sqlalchemy.text(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(:name)"), {"name": qualified(table, schema)}).fetchone()
    if target is None:  # no such table yet: nothing can read it
        return False
    plan = connection.exec_driver_sql("EXPLAIN (VERBOSE, FORMAT JSON) " + select).scalar()
    found: set[tuple[str, str]] = set()
    _plan_relations(json.loads(plan) if isinstance(plan, str) else plan, found)
    return (target[0], target[1]) in found


def named_in(select: str, table: str) -> bool:
    """The fallback of other databases: ``table`` appears as a word in the query text."""
    return re.search(r"(?<![A-Za-z0-9_$])" + re.escape(table) + r"(?![A-Za-z0-9_$])", select, re.IGNORECASE) is not None


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str, schema: Optional[str]) -> str:
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)
