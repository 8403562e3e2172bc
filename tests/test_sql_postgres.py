"""The SQL interface and the tabular source on a real PostgreSQL server (started by the tests, see pg_server.py)."""

import pytest

import peerlearn.sql
from peerlearn.data import sql_read
from peerlearn.data.tabular import run_query
from peerlearn.errors import ConfigError
from peerlearn.sql.demo import create_demo_tables
from pg_server import postgres_url  # noqa: F401  (the session fixture)

pytest.importorskip("sqlglot")

SMALL = ("members = [{model: mlp, model_args: {widths: [16]}}], train.epochs = 5, data.batch_size = 16, "
         "tracking.tensorboard = false")


@pytest.fixture(scope="module")
def pg(postgres_url):  # noqa: F811
    create_demo_tables(postgres_url, overwrite=True)
    return postgres_url


def _count(url, sql):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(sql)).fetchall()
    finally:
        engine.dispose()


def test_train_evaluate_predict_on_postgres(tmp_path, pg):
    models = tmp_path / "models"
    trained = peerlearn.sql.run(f"SELECT * FROM wine WHERE id % 5 != 0 TO TRAIN independent WITH {SMALL} "
                                "LABEL cultivar INTO wine_mlp;", db=pg, models=models)
    assert trained.details["left_out"] == {"id": "has a different integer in every row (an identifier?)"}
    assert len(trained.details["features"]) == 13
    evaluated = peerlearn.sql.run("SELECT * FROM wine WHERE id % 5 = 0 TO EVALUATE wine_mlp LABEL cultivar;",
                                  db=pg, models=models)
    assert evaluated.details["items"] == 35 and evaluated.details["classification"]["m0"]["top1"] > 0.8
    peerlearn.sql.run("SELECT id, alcohol, malic_acid, ash, alcalinity_of_ash, magnesium, total_phenols, flavanoids, "
                      "nonflavanoid_phenols, proanthocyanins, color_intensity, hue, od280_od315_of_diluted_wines, "
                      "proline FROM wine WHERE id % 5 = 0 TO PREDICT wine_predicted.cultivar "
                      "WITH probabilities = true USING wine_mlp;", db=pg, models=models)
    rows = _count(pg, "SELECT p.id, p.cultivar, w.cultivar, p.cultivar_prob_barolo FROM wine_predicted p "
                      "JOIN wine w ON w.id = p.id ORDER BY p.id")
    assert len(rows) == 35 and rows[0][0] == 5
    accuracy = sum(r[1] == r[2] for r in rows) / len(rows)
    assert accuracy == pytest.approx(evaluated.details["classification"]["m0"]["top1"], abs=1e-6)
    with pytest.raises(ConfigError, match="already exists"):
        peerlearn.sql.run("SELECT * FROM wine TO PREDICT wine_predicted.cultivar USING wine_mlp", db=pg,
                          models=models)
    assert len(_count(pg, "SELECT * FROM wine_predicted")) == 35  # unchanged by the refused statement
    # unquoted names fold to lower case, as PostgreSQL folds them: a plain SELECT finds the table
    peerlearn.sql.run("SELECT * FROM wine WHERE id < 4 TO PREDICT Wine_Upper.Cultivar USING wine_mlp", db=pg,
                      models=models)
    assert [r[0] for r in _count(pg, "SELECT Id FROM Wine_Upper ORDER BY id")] == [1, 2, 3]


def test_demo_db_loads_the_tables_into_a_server_url(pg, tmp_path, monkeypatch, capsys):
    from peerlearn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sql", "--demo-db", pg, "--overwrite"]) == 0
    assert "demo database with tables wine, breast_cancer, iris: postgresql" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no SQLite file named like the URL
    assert _count(pg, "SELECT count(*) FROM iris")[0][0] == 150
    assert main(["sql", "--demo-db", pg]) == 2  # the tables exist: nothing replaced without --overwrite
    assert "already exists" in capsys.readouterr().err


def test_postgres_is_only_read(pg):
    with pytest.raises(ConfigError, match="not a SELECT"):
        run_query(pg, "DROP TABLE wine", "auto", "data.options.query")
    with pytest.raises(ConfigError, match="contains DELETE"):
        run_query(pg, "WITH gone AS (DELETE FROM wine RETURNING *) SELECT * FROM gone", "auto", "data.options.query")
    # past the parser, the transaction itself is read-only
    with pytest.raises(ConfigError, match="read-only transaction"):
        sql_read.sqlalchemy_read(pg, "WITH gone AS (DELETE FROM wine RETURNING *) SELECT * FROM gone",
                                 "data.options.query")
    with pytest.raises(ConfigError, match="read-only transaction"):
        sql_read.sqlalchemy_read(pg, "CREATE TABLE sneaky AS SELECT * FROM wine", "data.options.query")
    assert _count(pg, "SELECT count(*) FROM wine")[0][0] == 178
    assert _count(pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'sneaky'")[0][0] == 0
