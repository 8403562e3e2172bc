"""The SQL interface end to end on SQLite: train (independent, mutual, distill, transfer), evaluate, predict into
a new table, show; models are ordinary run directories."""

import sqlite3

import pytest
import yaml

import peerlearn
import peerlearn.sql
from conftest import run_cli
from peerlearn.errors import ConfigError, DataError
from peerlearn.sql.grammar import SqlSyntaxError

pytest.importorskip("sqlglot")

TRAIN_ROWS = "SELECT * FROM wine WHERE id % 5 != 0"
TEST_ROWS = "SELECT * FROM wine WHERE id % 5 = 0"
FAST = "train.epochs = 5, data.batch_size = 16, tracking.tensorboard = false, train.threads = 1"
SMALL_MLP = "{model: mlp, model_args: {widths: [16]}}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sql")
    url = peerlearn.sql.create_demo_db(folder / "demo.db")
    return url, folder / "models"


def sql(statement, demo, **kwargs):
    url, models = demo
    return peerlearn.sql.run(statement, db=url, models=models, **kwargs)


def select(demo, query):
    with sqlite3.connect(demo[0].removeprefix("sqlite:///")) as connection:
        return connection.execute(query).fetchall()


@pytest.fixture(scope="module")
def mutual(demo):
    return sql(f"{TRAIN_ROWS} TO TRAIN mutual WITH members = [{SMALL_MLP}, {SMALL_MLP}], mutual.weight = 1, {FAST} "
               "LABEL cultivar INTO wine_dml;", demo)


def test_train_mutual_writes_a_normal_run_directory(demo, mutual):
    run_dir = demo[1] / "wine_dml"
    assert mutual.run_dir == run_dir and (run_dir / "model.safetensors").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["recipe"] == "mutual" and config["mutual"]["weight"] == 1
    assert [m["model_args"]["widths"] for m in config["members"]] == [[16], [16]]
    options = config["data"]["options"]
    assert options["query"] == TRAIN_ROWS and options["label"] == "cultivar"
    assert "id" not in options["features"] and len(options["features"]) == 13  # the id leaks nothing
    assert "left out: 'id' has a different integer in every row" in mutual.text
    assert mutual.details["summary"]["ensemble"]["test"]["top1"] > 0.8
    # every other command works on the model: evaluate a split of its own data
    evaluation = peerlearn.evaluate_run(run_dir, save=False)
    assert set(evaluation["classification"]) == {"m0", "m1", "ensemble"}


def test_evaluate_prints_the_metrics_of_peerlearn_evaluate(demo, mutual):
    result = sql(f"{TEST_ROWS} TO EVALUATE wine_dml LABEL cultivar;", demo)
    scores = result.details["classification"]
    assert result.details["items"] == 35 and set(scores) == {"m0", "m1", "ensemble"}
    assert scores["ensemble"]["top1"] > 0.85
    assert sum(map(sum, scores["m0"]["confusion"])) == 35
    assert "classification on the query split (35 labelled items)" in result.text and "confusion matrix" in result.text


def test_predict_writes_a_new_table_once(demo, mutual):
    result = sql(f"{TEST_ROWS} TO PREDICT wine_predicted.cultivar WITH probabilities = true USING wine_dml;", demo)
    assert result.details["columns"] == ["id", "cultivar", "cultivar_prob_barbera", "cultivar_prob_barolo",
                                         "cultivar_prob_grignolino"]
    rows = select(demo, "SELECT p.id, p.cultivar, w.cultivar, p.cultivar_prob_barbera + p.cultivar_prob_barolo + "
                        "p.cultivar_prob_grignolino FROM wine_predicted p JOIN wine w USING (id) ORDER BY p.id")
    assert len(rows) == 35 and [r[0] for r in rows] == list(range(5, 179, 5))
    assert all(abs(r[3] - 1) < 1e-5 for r in rows)
    evaluation = sql(f"{TEST_ROWS} TO EVALUATE wine_dml LABEL cultivar;", demo)
    accuracy = sum(r[1] == r[2] for r in rows) / len(rows)  # the predictions are the ensemble's
    assert accuracy == pytest.approx(evaluation.details["classification"]["ensemble"]["top1"])
    with pytest.raises(ConfigError, match="already exists; nothing was written"):
        sql(f"{TRAIN_ROWS} TO PREDICT wine_predicted.cultivar USING wine_dml;", demo)
    assert len(select(demo, "SELECT * FROM wine_predicted")) == 35
    sql(f"{TRAIN_ROWS} TO PREDICT wine_predicted.cultivar WITH member = m1, overwrite = true USING wine_dml;", demo)
    assert select(demo, "SELECT count(*) FROM wine_predicted")[0][0] == 143
    assert [c[1] for c in select(demo, "PRAGMA table_info(wine_predicted)")] == ["id", "cultivar"]


def test_show_train_gives_statement_and_config(demo, mutual):
    shown = sql("SHOW TRAIN wine_dml;", demo)
    assert shown.details["statement"].startswith(f"{TRAIN_ROWS} TO TRAIN mutual WITH members")
    assert "recipe: mutual" in shown.text and "INTO wine_dml" in shown.text


def test_independent_with_named_columns_and_a_taken_name(demo):
    statement = (f"{TRAIN_ROWS} TO TRAIN independent WITH members = [{SMALL_MLP}], {FAST} "
                 "COLUMN id, alcohol, flavanoids, color_intensity LABEL cultivar INTO wine_four;")
    result = sql(statement, demo)
    assert result.details["features"] == ["id", "alcohol", "flavanoids", "color_intensity"]  # named: id is used
    with pytest.raises(ConfigError, match="already holds a model 'wine_four'.*--overwrite"):
        sql(statement, demo)
    sql(statement.replace("epochs = 5", "epochs = 1"), demo, overwrite=True)
    config = yaml.safe_load((demo[1] / "wine_four" / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1
    with pytest.raises(DataError, match="no column.*flavanoids, color_intensity, which the model needs"):
        sql("SELECT id, alcohol FROM wine TO PREDICT p.cultivar USING wine_four;", demo)


def test_distill_from_a_stored_teacher_and_transfer_from_a_stored_backbone(demo, mutual):
    distilled = sql(f"{TRAIN_ROWS} TO TRAIN distill WITH members = [{{name: teacher, model: mlp, model_args: "
                    f"{{widths: [16]}}, weights: 'wine_dml.m1', trainable: false}}, {{name: student, model: mlp, "
                    f"model_args: {{widths: [8]}}}}], distill.temperature = 2, {FAST} LABEL cultivar INTO wine_kd;",
                    demo)
    members = distilled.details["summary"]["members"]
    teacher_before = mutual.details["summary"]["members"]["m1"]["test"]["top1"]
    assert members["teacher"]["test"]["top1"] == pytest.approx(teacher_before)  # the stored weights, frozen
    predicted = sql(f"{TEST_ROWS} TO PREDICT wine_kd_predicted.cultivar USING wine_kd;", demo)
    assert predicted.details["predicted_by"] == "student"
    transfer = sql(f"{TRAIN_ROWS} TO TRAIN transfer WITH transfer.backbones = [{{source: wine_dml, member: m0}}], "
                   f"{FAST} LABEL cultivar INTO wine_head;", demo)
    assert transfer.details["summary"]["members"]["m0"]["test"]["top1"] > 0.8
    evaluated = sql(f"{TEST_ROWS} TO EVALUATE wine_head LABEL cultivar;", demo)
    assert evaluated.details["classification"]["m0"]["top1"] > 0.8


def test_with_keys_the_statement_sets_or_the_schema_refuses_point_at_the_key(demo, mutual):  # lists wine_dml
    with pytest.raises(SqlSyntaxError, match="sets data.options.query itself") as caught:
        sql(f"{TRAIN_ROWS} TO TRAIN mutual WITH data.options.query = 'SELECT 1' LABEL cultivar INTO x;", demo)
    assert str(caught.value).splitlines()[-1].index("^") - 4 == f"{TRAIN_ROWS} TO TRAIN mutual WITH ".__len__()
    with pytest.raises(SqlSyntaxError, match="optim.lrr"):
        sql(f"{TRAIN_ROWS} TO TRAIN mutual WITH optim.lrr = 0.1 LABEL cultivar INTO x;", demo)
    with pytest.raises(SqlSyntaxError, match="no column 'grape'"):
        sql(f"{TRAIN_ROWS} TO TRAIN mutual LABEL grape INTO x;", demo)
    with pytest.raises(ConfigError, match="no model 'nothing'.*its models: .*wine_dml"):
        sql(f"{TEST_ROWS} TO EVALUATE nothing LABEL cultivar;", demo)
    assert not (demo[1] / "x").exists()


def test_cli_runs_a_statement(tmp_path):
    peerlearn.sql.create_demo_db(tmp_path / "demo.db")
    done = run_cli("sql", f"SELECT * FROM iris TO TRAIN independent WITH members = [{SMALL_MLP}], {FAST} "
                   "LABEL species INTO iris_mlp", "--db", str(tmp_path / "demo.db"), "--models", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert "features (4): sepal_length_cm" in done.stdout and (tmp_path / "m" / "iris_mlp" / "statement.sql").is_file()


def test_the_table_is_written_in_one_transaction(tmp_path):
    """A failure while filling the table leaves no table; a replacement replaces all or nothing."""
    from peerlearn.sql.writer import write_table

    path = tmp_path / "t.db"
    sqlite3.connect(path).close()
    url = f"sqlite:///{path}"
    columns = [("id", "integer"), ("label", "text")]
    write_table(url, "out", None, columns, [(1, "a"), (2, "b")])
    with pytest.raises(ConfigError, match="Cannot write the table 'fresh'"):
        write_table(url, "fresh", None, columns, [(1, "a"), (2, object())])  # the second row cannot be stored
    with pytest.raises(ConfigError, match="Cannot write the table 'out'"):
        write_table(url, "out", None, columns, [(3, "c"), (4, object())], overwrite=True)
    with sqlite3.connect(path) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables == ["out"] and connection.execute("SELECT * FROM out").fetchall() == [(1, "a"), (2, "b")]


def test_a_model_keeps_its_recorded_scaling_when_its_training_rows_change(tmp_path):
    url = peerlearn.sql.create_demo_db(tmp_path / "demo.db")
    models = tmp_path / "models"
    peerlearn.sql.run(f"SELECT * FROM iris TO TRAIN independent WITH members = [{SMALL_MLP}], {FAST} "
                      "LABEL species INTO iris_mlp", db=url, models=models)
    predict = "SELECT rowid AS row, * FROM iris WHERE rowid <= 75 TO PREDICT {}.species USING iris_mlp"
    peerlearn.sql.run(predict.format("before"), db=url, models=models)
    with sqlite3.connect(tmp_path / "demo.db") as connection:  # other training rows change: scaling must not
        connection.execute("UPDATE iris SET petal_length_cm = petal_length_cm * 10 WHERE rowid > 75")
    assert peerlearn.sql.run(predict.format("after"), db=url, models=models).details["rows"] == 75
    with sqlite3.connect(tmp_path / "demo.db") as connection:
        before = connection.execute("SELECT row, species FROM before ORDER BY row").fetchall()
        after = connection.execute("SELECT row, species FROM after ORDER BY row").fetchall()
    assert len(before) == 75 and before == after


def test_show_train_hides_a_password():
    from peerlearn.sql.runner import hide_password

    assert hide_password("url: postgresql+psycopg://bob:s3cret@db.example:5432/wine") == \
        "url: postgresql+psycopg://bob:***@db.example:5432/wine"


def test_cli_demo_db_and_evaluate_in_process(tmp_path, demo, mutual, capsys):
    from peerlearn.cli import main

    assert main(["sql", "--demo-db", str(tmp_path / "demo.db")]) == 0
    assert "demo database with tables wine, breast_cancer, iris: sqlite:///" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "demo.db") as connection:
        counts = connection.execute("SELECT count(*), count(DISTINCT diagnosis) FROM breast_cancer").fetchone()
    assert counts == (569, 2)
    assert main(["sql", "--demo-db", str(tmp_path / "demo.db")]) == 2  # the tables exist: nothing replaced
    assert "already exists" in capsys.readouterr().err
    assert main(["sql", f"{TEST_ROWS} TO EVALUATE wine_dml LABEL cultivar", "--db", str(tmp_path / "demo.db"),
                 "--models", str(demo[1])]) == 0
    assert "ensemble: confusion matrix" in capsys.readouterr().out


def test_demo_db_takes_a_sqlite_url_and_refuses_a_server_it_cannot_reach(tmp_path, monkeypatch, capsys):
    from peerlearn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sql", "--demo-db", f"sqlite:///{tmp_path / 'sub' / 'demo.db'}"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # the file the URL names, no file named like it
    with sqlite3.connect(tmp_path / "sub" / "demo.db") as connection:
        assert connection.execute("SELECT count(*) FROM iris").fetchone() == (150,)
    capsys.readouterr()
    # a server URL: the tables go to that database, or a clear refusal (here: nothing listens on port 1)
    assert main(["sql", "--demo-db", "postgresql+psycopg://bob:s3cret@127.0.0.1:1/demo"]) == 2
    err = capsys.readouterr().err
    assert "Cannot load the demo tables into postgresql+psycopg://bob:***@127.0.0.1:1/demo" in err
    assert "s3cret" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # nothing written here


def test_dml_variants_are_with_keys(demo):
    from peerlearn.sql.statements import parse_statement
    from peerlearn.sql.store import ModelStore
    from peerlearn.sql.training import build_config

    statement = parse_statement(f"{TRAIN_ROWS} TO TRAIN mutual WITH members = [mlp, mlp, mlp], mutual.teacher = "
                                "ensemble, mutual.divergence = js, mutual.update = sequential, mutual.temperature = 2 "
                                "LABEL cultivar INTO dml_e", "sqlite")
    config = build_config(statement, demo[0], ["alcohol", "hue"], ModelStore(demo[1]))
    assert [m.model for m in config.members] == ["mlp"] * 3
    assert (config.mutual.teacher, config.mutual.divergence, config.mutual.update) == ("ensemble", "js", "sequential")
    assert config.data.options["features"] == ["alcohol", "hue"] and config.data.options["url"] == demo[0]
