"""The tabular source: CSV files and SQL queries (sqlite3 and SQLAlchemy), class names, clear errors."""

import csv
import sqlite3

import pytest
import torch
from sklearn.datasets import load_wine

import peerlearn
from conftest import run_cli
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.errors import ConfigError, DataError

CULTIVARS = ["barolo", "grignolino", "barbera"]


@pytest.fixture(scope="module")
def wine():
    bunch = load_wine()
    columns = [name.replace("/", "_") for name in bunch.feature_names]
    rows = [tuple(float(v) for v in values) + (CULTIVARS[target],) for values, target in zip(bunch.data, bunch.target)]
    return columns, rows


@pytest.fixture
def wine_db(tmp_path, wine):
    columns, rows = wine
    path = tmp_path / "wine.db"
    with sqlite3.connect(path) as connection:
        connection.execute(f"CREATE TABLE wine (id INTEGER, {', '.join(c + ' REAL' for c in columns)}, cultivar TEXT)")
        connection.executemany(f"INSERT INTO wine VALUES ({', '.join('?' * (len(columns) + 2))})",
                               [(i, *row) for i, row in enumerate(rows)])
    connection.close()
    return path


def _config(tmp_path, options, path=None, recipe="mutual", **extra):
    return {
        "name": "wine", "recipe": recipe, "seed": 0,
        "data": {"source": "tabular", "path": path, "options": options, "batch_size": 16, "val_fraction": 0.15},
        "members": [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in ("a", "b")],
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 15, "progress": "off", "threads": 1},
        "tracking": {"tensorboard": False}, **extra,
    }


def test_dml_trains_from_a_sqlite_query(tmp_path, wine_db):
    options = {"url": f"sqlite:///{wine_db}", "label": "cultivar",
               "query": "SELECT * FROM wine WHERE id % 5 != 0", "test_query": "SELECT * FROM wine WHERE id % 5 = 0",
               "features": ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline", "hue"]}
    result = peerlearn.train(_config(tmp_path, options), out=tmp_path / "runs")
    data = result.recipe.data
    assert data.class_names == sorted(CULTIVARS) and data.in_features == 6
    assert len(data.train) + len(data.val) == 142 and len(data.test) == 36
    # standardised with the training split's statistics: proline (~750) and hue (~1) on one scale
    x = torch.cat([b.x for _, b in result.recipe.eval_streams["val"].epoch(0)])
    assert float(x.abs().mean()) < 2.0
    assert data.std[4] > 100 and data.std[5] < 1
    accuracy = result.member_accuracy("test")
    assert min(accuracy.values()) > 0.9, accuracy
    assert result.summary["ensemble"]["test"]["top1"] > 0.9


def test_sqlalchemy_client_reads_the_same_rows(tmp_path, wine_db):
    options = {"url": f"sqlite:///{wine_db}", "label": "cultivar", "table": "wine"}
    with pytest.warns(UserWarning, match="'id' has a different integer in every row"):
        by_sqlite3 = prepare_run(load_config(_config(tmp_path, options)))[0]
        by_sqlalchemy = prepare_run(load_config(_config(tmp_path, {**options, "sql_client": "sqlalchemy"})))[0]
    assert by_sqlite3.in_features == 13  # the 13 measurements: the id column is left out
    torch.testing.assert_close(by_sqlite3.train.x, by_sqlalchemy.train.x)
    assert torch.equal(by_sqlite3.test.y, by_sqlalchemy.test.y)


def test_bad_query_and_missing_column_are_clear_errors(tmp_path, wine_db):
    url = f"sqlite:///{wine_db}"
    with pytest.raises(ConfigError, match=r"data.options.query.*no such table: wines"):
        prepare_run(load_config(_config(tmp_path, {"url": url, "label": "cultivar", "query": "SELECT * FROM wines"})))
    with pytest.raises(ConfigError, match=r"data.options.features.*acidity.*its columns: id, alcohol"):
        prepare_run(load_config(_config(tmp_path, {"url": url, "label": "cultivar", "table": "wine",
                                                   "features": ["alcohol", "acidity"]})))
    with pytest.raises(ConfigError, match=r"data.options.label.*'grape'"):
        prepare_run(load_config(_config(tmp_path, {"url": url, "label": "grape", "table": "wine"})))
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_run(load_config(_config(tmp_path, {"url": f"sqlite:///{tmp_path}/none.db", "label": "x",
                                                   "table": "t"})))
    assert not (tmp_path / "none.db").exists()  # opening read-only creates nothing


def test_cli_exits_2_naming_the_problem(tmp_path, wine_db):
    done = run_cli("train", "--out", str(tmp_path / "runs"), "data.source=tabular",
                   f"data.options={{url: 'sqlite:///{wine_db}', label: cultivar, query: 'SELEC * FROM wine'}}",
                   "members.0.model=mlp", "members.1.model=mlp")
    assert done.returncode == 2, done.stderr
    assert "data.options.query" in done.stderr and "syntax error" in done.stderr and "Traceback" not in done.stderr


def test_csv_with_string_labels_and_a_test_file(tmp_path, wine):
    columns, rows = wine
    for name, part in (("train.csv", rows[1::2]), ("test.csv", rows[::2])):
        with open(tmp_path / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns + ["cultivar"])
            writer.writerows(part)
    options = {"label": "cultivar", "test_path": str(tmp_path / "test.csv")}
    result = peerlearn.train(_config(tmp_path, options, path=str(tmp_path / "train.csv"), recipe="independent"),
                             out=tmp_path / "runs")
    assert result.recipe.data.class_names == sorted(CULTIVARS) and result.recipe.data.in_features == 13
    assert len(result.recipe.data.test) == 89
    assert min(result.member_accuracy("test").values()) > 0.9


def test_csv_problems_name_column_and_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n1,,y\n")
    with pytest.raises(DataError, match=r"column 'b', row 2 is empty"):
        prepare_run(load_config(_config(tmp_path, {"label": "label"}, path=str(path))))
    path.write_text("a,label\n1,3\n2,10\n1,3\n4,10\n5,3\n6,10\n")  # numeric labels sort numerically
    data = prepare_run(load_config(_config(tmp_path, {"label": "label", "test_fraction": 0.34}, path=str(path))))[0]
    assert data.class_names == ["3", "10"]
    with pytest.raises(ConfigError, match=r"data.options.sheet.*allowed: label"):
        prepare_run(load_config(_config(tmp_path, {"label": "label", "sheet": 1}, path=str(path))))
    with pytest.raises(ConfigError, match="members.0.model.*small_cnn.*mlp"):
        prepare_run(load_config(_config(tmp_path, {"label": "label", "test_fraction": 0.34}, path=str(path),
                                        members=[{"name": "a", "model": "small_cnn"}])))


def test_an_id_column_is_left_out_unless_named(tmp_path, wine):
    """Rows sorted by class: the id alone would give the label away (issue 18.4). Text columns are left out too."""
    columns, rows = wine
    ordered = sorted(rows, key=lambda row: row[-1])
    path = tmp_path / "wine.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "vineyard", *columns, "cultivar"])
        writer.writerows([i, f"v{i % 7}", *row] for i, row in enumerate(ordered))
    with pytest.warns(UserWarning, match=r"left out of the features: 'id' has a different integer in every row "
                                         r"\(an identifier\?\); 'vineyard' holds text") as caught:
        data = prepare_run(load_config(_config(tmp_path, {"label": "cultivar"}, path=str(path))))[0]
    assert "data.options.features" in str(caught[0].message)
    assert data.in_features == 13
    named = prepare_run(load_config(_config(tmp_path, {"label": "cultivar", "features": ["id", "alcohol"]},
                                            path=str(path))))[0]
    assert named.in_features == 2  # named explicitly: used
