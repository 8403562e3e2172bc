"""SQL sources only read (issue 16.5): anything but one SELECT is refused before it reaches the database, and
the connections themselves cannot write (SQLite mode=ro + authorizer; read-only, rolled-back transactions)."""

import builtins
import sqlite3

import pytest

from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.data import sql_read
from peerlearn.data.tabular import run_query
from peerlearn.errors import ConfigError
from peerlearn.sql.demo import create_demo_db

pytest.importorskip("sqlglot")
pytest.importorskip("sqlalchemy")

NOT_READS = {
    "DROP TABLE wine": "is DROP, not a SELECT",
    "DELETE FROM wine": "is DELETE, not a SELECT",
    "PRAGMA journal_mode = wal": "is PRAGMA, not a SELECT",
    "SELECT * FROM wine; DROP TABLE wine": "holds 2 statements",
    "WITH gone AS (DELETE FROM wine RETURNING *) SELECT * FROM gone": "contains DELETE",
    "SELECT * INTO copy FROM wine": "contains SELECT ... INTO",
    "VACUUM INTO 'copy.db'": "not a SELECT",
}


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "demo.db"
    create_demo_db(path)
    return path


def _rows(path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM wine").fetchone()[0]


def _config(options):
    return load_config({"data": {"source": "tabular", "options": {"label": "cultivar", **options}},
                        "members": [{"model": "mlp", "model_args": {"widths": [4]}}],
                        "train": {"epochs": 1, "progress": "off", "threads": 1}})


@pytest.mark.parametrize("client", ["sqlite3", "sqlalchemy"])
def test_drop_and_attach_are_refused_and_change_nothing(tmp_path, demo_db, client):
    url = f"sqlite:///{demo_db}"
    attached = tmp_path / "attached.db"
    for query in ("DROP TABLE wine", f"ATTACH DATABASE '{attached}' AS other"):
        with pytest.raises(ConfigError, match="not a SELECT"):
            prepare_run(_config({"url": url, "query": query, "sql_client": client}))
    assert _rows(demo_db) == 178 and not attached.exists()


@pytest.mark.parametrize("query, reason", NOT_READS.items())
def test_every_kind_of_write_is_refused_by_the_parser(tmp_path, demo_db, query, reason):
    for client in ("sqlite3", "sqlalchemy"):
        with pytest.raises(ConfigError, match=reason.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            run_query(f"sqlite:///{demo_db}", query, client, "data.options.query")
    assert _rows(demo_db) == 178 and not (tmp_path / "copy.db").exists()


def test_reads_still_work_with_cte_union_and_subqueries(demo_db):
    query = ("WITH light AS (SELECT * FROM wine WHERE alcohol < 12.5) "
             "SELECT id, cultivar FROM light UNION SELECT id, cultivar FROM wine WHERE id IN (SELECT 1)")
    for client in ("sqlite3", "sqlalchemy"):
        table = run_query(f"sqlite:///{demo_db}", query, client, "data.options.query")
        assert table.columns == ["id", "cultivar"] and len(table.rows) > 1


def test_the_connection_refuses_writes_even_without_the_parser(tmp_path, demo_db, monkeypatch):
    """Without sqlglot the SQLite connection guards alone: mode=ro and an authorizer that allows reading."""
    real_import = builtins.__import__

    def no_sqlglot(name, *args, **kwargs):
        if name == "sqlglot" or name.startswith("sqlglot."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sqlglot)
    url = f"sqlite:///{demo_db}"
    attached = tmp_path / "attached.db"
    for query in ("DROP TABLE wine", "DELETE FROM wine", f"ATTACH DATABASE '{attached}' AS other",
                  "PRAGMA journal_mode = wal", "CREATE TABLE t (a)"):
        with pytest.raises(ConfigError, match="not authorized|readonly|one statement"):
            run_query(url, query, "sqlite3", "data.options.query")
    assert len(run_query(url, "SELECT * FROM wine", "sqlite3", "data.options.query").rows) == 178
    with pytest.raises(ConfigError, match="needs sqlglot"):  # other databases need the parser
        run_query(url, "SELECT * FROM wine", "sqlalchemy", "data.options.query")
    assert _rows(demo_db) == 178 and not attached.exists()


def test_sqlalchemy_sqlite_connection_is_read_only_too(demo_db):
    """Bypass the parser: the SQLAlchemy connection to a SQLite file cannot write either."""
    with pytest.raises(ConfigError, match="not authorized|readonly"):
        sql_read.sqlalchemy_read(f"sqlite:///{demo_db}", "DELETE FROM wine", "data.options.query")
    assert _rows(demo_db) == 178


def test_missing_database_file_is_not_created(tmp_path):
    for client in ("sqlite3", "sqlalchemy"):
        with pytest.raises(ConfigError, match="does not exist"):
            run_query(f"sqlite:///{tmp_path}/none.db", "SELECT 1", client, "data.options.query")
    assert not (tmp_path / "none.db").exists()
