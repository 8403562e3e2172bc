"""TO PREDICT writes only tables peerlearn created for predictions, never a table its own SELECT reads,
with or without overwrite, on SQLite and on a real PostgreSQL server; a refused or failed statement
changes nothing."""

from __future__ import annotations

import sqlite3

import pytest

import peerlearn.sql
from peerlearn.cli import main
from peerlearn.errors import ConfigError
from peerlearn.sql.ownership import REGISTRY
from peerlearn.sql.writer import write_prediction_table
from pg_server import postgres_url  # noqa: F401  (the session fixture)

pytest.importorskip("sqlglot")

FAST = ("members = [{model: mlp, model_args: {widths: [8]}}], train.epochs = 2, data.batch_size = 32, "
        "tracking.tensorboard = false, train.threads = 1")
READS = "its own SELECT reads"
FOREIGN = "was not created by peerlearn"


# --------------------------------------------------------------------------- SQLite
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sql")
    url = peerlearn.sql.create_demo_db(folder / "demo.db")
    models = folder / "models"
    peerlearn.sql.run(f"SELECT * FROM wine TO TRAIN independent WITH {FAST} LABEL cultivar INTO m", db=url,
                      models=models)
    return url, models, folder / "demo.db"


def _rows(path, table):
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def _run(lite, statement, **kwargs):
    return peerlearn.sql.run(statement, db=lite[0], models=lite[1], **kwargs)


@pytest.mark.parametrize("statement", [
    "SELECT * FROM wine TO PREDICT wine.cultivar WITH overwrite = true USING m",
    "SELECT * FROM wine TO PREDICT WINE.cultivar WITH overwrite = true USING m",  # names are case-blind
    "SELECT w.* FROM iris i JOIN wine w ON w.id = i.rowid TO PREDICT wine.c WITH overwrite = true USING m",
    "WITH q AS (SELECT * FROM wine) SELECT * FROM q TO PREDICT wine.c WITH overwrite = true USING m",
    "SELECT * FROM wine_view TO PREDICT wine.c WITH overwrite = true USING m",  # through a view
])
def test_a_table_the_query_reads_is_never_replaced(lite, statement):
    with sqlite3.connect(lite[2]) as connection:
        connection.execute("CREATE VIEW IF NOT EXISTS wine_view AS SELECT * FROM wine")
    before = _rows(lite[2], "wine")
    with pytest.raises(ConfigError, match=READS):
        _run(lite, statement)
    with pytest.raises(ConfigError, match=READS):
        _run(lite, statement.replace(" WITH overwrite = true", ""), overwrite=True)  # --overwrite alike
    assert _rows(lite[2], "wine") == before


def test_a_table_peerlearn_did_not_create_is_never_replaced(lite):
    before = _rows(lite[2], "iris")
    for statement in ("SELECT * FROM wine WHERE id < 5 TO PREDICT iris.c WITH overwrite = true USING m",
                      "SELECT * FROM wine WHERE id < 5 TO PREDICT iris.c USING m"):
        with pytest.raises(ConfigError, match=FOREIGN):
            _run(lite, statement)
    with pytest.raises(ConfigError, match="records its prediction tables"):
        _run(lite, f"SELECT * FROM wine TO PREDICT {REGISTRY}.c USING m")
    assert _rows(lite[2], "iris") == before


def test_its_own_prediction_table_is_replaced_only_with_overwrite(lite):
    _run(lite, "SELECT * FROM wine WHERE id < 5 TO PREDICT predicted.cultivar USING m")
    assert [r[0] for r in _rows(lite[2], "predicted")] == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="already exists"):
        _run(lite, "SELECT * FROM wine WHERE id < 8 TO PREDICT predicted.cultivar USING m")
    _run(lite, "SELECT * FROM wine WHERE id < 8 TO PREDICT predicted.cultivar WITH overwrite = true USING m")
    assert [r[0] for r in _rows(lite[2], "predicted")] == list(range(1, 8))
    with sqlite3.connect(lite[2]) as connection:
        assert connection.execute(f"SELECT table_name FROM {REGISTRY}").fetchall() == [("predicted",)]
    # a table reading its own earlier predictions may not replace them either
    with pytest.raises(ConfigError, match=READS):
        _run(lite, "SELECT p.id, w.* FROM predicted p JOIN wine w USING (id) TO PREDICT predicted.x "
                   "WITH overwrite = true USING m")


def test_a_table_made_again_by_someone_else_under_the_same_name_is_not_peerlearns(lite):
    _run(lite, "SELECT * FROM wine WHERE id < 5 TO PREDICT mine.cultivar USING m")
    with sqlite3.connect(lite[2]) as connection:
        connection.execute("DROP TABLE mine")
        connection.execute('CREATE TABLE "mine" ("id" INTEGER, "cultivar" TEXT)')  # the same shape, by hand
        connection.execute("INSERT INTO mine VALUES (99, 'precious')")
    with pytest.raises(ConfigError, match=FOREIGN):
        _run(lite, "SELECT * FROM wine WHERE id < 5 TO PREDICT mine.cultivar WITH overwrite = true USING m")
    assert _rows(lite[2], "mine") == [(99, "precious")]


def test_a_failed_write_changes_nothing(lite):
    _run(lite, "SELECT * FROM wine WHERE id < 4 TO PREDICT kept.cultivar USING m")
    before = _rows(lite[2], "kept")
    columns = [("id", "integer"), ("cultivar", "text")]
    with pytest.raises(ConfigError, match="nothing was changed"):  # the second row cannot be stored
        write_prediction_table(lite[0], "kept", None, columns, [(1, "a"), (2, object())], "SELECT 1", overwrite=True)
    assert _rows(lite[2], "kept") == before
    with sqlite3.connect(lite[2]) as connection:
        assert ("kept",) in connection.execute(f"SELECT table_name FROM {REGISTRY}").fetchall()


def test_the_command_line_refuses_with_exit_2(lite, capsys):
    code = main(["sql", "SELECT * FROM wine TO PREDICT wine.cultivar USING m", "--overwrite", "--db", lite[0],
                 "--models", str(lite[1])])
    err = capsys.readouterr().err
    assert code == 2 and READS in err and "Traceback" not in err


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def pg(postgres_url, lite):  # noqa: F811
    from peerlearn.sql.demo import create_demo_tables

    create_demo_tables(postgres_url, overwrite=True)
    return postgres_url, lite[1]


def _pg(pg, sql):
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg[0])
    try:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(sql))
            return result.fetchall() if result.returns_rows else None
    finally:
        engine.dispose()


def test_postgres_refuses_the_tables_its_query_reads_and_foreign_tables(pg):
    wine = _pg(pg, "SELECT * FROM wine ORDER BY id")
    _pg(pg, "CREATE OR REPLACE VIEW wine_view AS SELECT * FROM public.wine")
    for statement in ("SELECT * FROM wine TO PREDICT wine.cultivar WITH overwrite = true USING m",
                      "SELECT * FROM wine_view TO PREDICT public.wine.c WITH overwrite = true USING m",
                      "SELECT * FROM iris WHERE EXISTS (SELECT 1 FROM wine) TO PREDICT wine.c WITH overwrite = true "
                      "USING m"):
        with pytest.raises(ConfigError, match=READS):
            peerlearn.sql.run(statement, db=pg[0], models=pg[1], overwrite=True)
    with pytest.raises(ConfigError, match=FOREIGN):
        peerlearn.sql.run("SELECT * FROM wine WHERE id < 5 TO PREDICT iris.c WITH overwrite = true USING m",
                          db=pg[0], models=pg[1])
    assert _pg(pg, "SELECT * FROM wine ORDER BY id") == wine and _pg(pg, "SELECT count(*) FROM iris")[0][0] == 150


def test_postgres_replaces_only_its_own_table_and_a_failure_changes_nothing(pg):
    run = lambda s: peerlearn.sql.run(s, db=pg[0], models=pg[1])  # noqa: E731
    run("SELECT * FROM wine WHERE id < 5 TO PREDICT pg_predicted.cultivar USING m")
    with pytest.raises(ConfigError, match="already exists"):
        run("SELECT * FROM wine WHERE id < 8 TO PREDICT pg_predicted.cultivar USING m")
    run("SELECT * FROM wine WHERE id < 8 TO PREDICT pg_predicted.cultivar WITH overwrite = true USING m")
    assert [r[0] for r in _pg(pg, "SELECT id FROM pg_predicted ORDER BY id")] == list(range(1, 8))
    columns = [("id", "integer"), ("cultivar", "text")]
    with pytest.raises(ConfigError, match="nothing was changed"):
        write_prediction_table(pg[0], "pg_predicted", None, columns, [(1, "a"), (2, object())], "SELECT 1",
                               overwrite=True)
    assert [r[0] for r in _pg(pg, "SELECT id FROM pg_predicted ORDER BY id")] == list(range(1, 8))
    # dropped and made again by hand with the same name: another table (another object id), not peerlearn's
    _pg(pg, "DROP TABLE pg_predicted")
    _pg(pg, "CREATE TABLE pg_predicted (id bigint, cultivar text)")
    _pg(pg, "INSERT INTO pg_predicted VALUES (99, 'precious')")
    with pytest.raises(ConfigError, match=FOREIGN):
        run("SELECT * FROM wine WHERE id < 5 TO PREDICT pg_predicted.cultivar WITH overwrite = true USING m")
    assert _pg(pg, "SELECT * FROM pg_predicted") == [(99, "precious")]
