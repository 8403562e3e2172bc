"""Statements of the SQL interface: what the parser reads, and errors that point at the problem (exit 2)."""

import re

import pytest

from conftest import run_cli
from peerlearn.sql.grammar import SqlSyntaxError
from peerlearn.sql.statements import (EvaluateStatement, PredictStatement, ShowTrainStatement, TrainStatement,
                                      parse_statement)

pytest.importorskip("sqlglot")


def caret_column(error: SqlSyntaxError) -> int:
    """The 0-based column the caret points at, read back from the message."""
    lines = str(error).splitlines()
    return lines[-1].index("^") - 4


def test_train_statement_with_every_clause():
    text = ("SELECT * FROM wine WHERE id % 5 != 0 -- a comment, TO TRAIN nothing\n"
            "TO TRAIN mutual WITH members = [mlp, {model: mlp, model_args: {widths: [32, 16]}}], mutual.weight = 0.5,"
            " optim.lr = 1e-3, members.0.name = 'a b', train.deterministic = false, schedule.gamma = -1"
            ' COLUMN alcohol, "hue" LABEL cultivar INTO wine_dml;')
    statement = parse_statement(text, "sqlite")
    assert isinstance(statement, TrainStatement)
    assert statement.select.startswith("SELECT * FROM wine WHERE id % 5 != 0") and "TO TRAIN mutual" not in \
        statement.select.replace("-- a comment, TO TRAIN nothing", "")
    assert statement.recipe == "mutual" and statement.label == "cultivar" and statement.model == "wine_dml"
    assert statement.columns == ["alcohol", "hue"]
    assert {a.key: a.value for a in statement.assignments} == {
        "members": ["mlp", {"model": "mlp", "model_args": {"widths": [32, 16]}}], "mutual.weight": 0.5,
        "optim.lr": 1e-3, "members.0.name": "a b", "train.deterministic": False, "schedule.gamma": -1}


def test_predict_evaluate_show():
    predict = parse_statement("SELECT id, alcohol FROM wine TO PREDICT out.wine_pred.cultivar WITH probabilities = "
                              "true USING m", "postgres")
    assert isinstance(predict, PredictStatement)
    assert (predict.schema, predict.table, predict.column, predict.model) == ("out", "wine_pred", "cultivar", "m")
    assert predict.options[0].key == "probabilities" and predict.options[0].value is True
    evaluate = parse_statement("select * from wine to evaluate m label cultivar", "sqlite")
    assert isinstance(evaluate, EvaluateStatement) and (evaluate.model, evaluate.label) == ("m", "cultivar")
    show = parse_statement("  show train m ;")
    assert isinstance(show, ShowTrainStatement) and show.model == "m"


def test_to_inside_strings_and_parentheses_is_part_of_the_query():
    statement = parse_statement("SELECT 'TO TRAIN x' AS t, (SELECT 1) AS \"TO\" FROM wine TO EVALUATE m LABEL c",
                                "sqlite")
    assert statement.select == "SELECT 'TO TRAIN x' AS t, (SELECT 1) AS \"TO\" FROM wine"


@pytest.mark.parametrize("text, message, at", [
    ("SELECT * FROM wine TO TRAIN mutual WITH train.epochs = LABEL c INTO m", "expected a value", "LABEL c"),
    ("SELECT * FROM wine TO TRAIN mutual WITH train.epochs 3 LABEL c INTO m", "expected '='", "3 LABEL"),
    ("SELECT * FROM wine TO TRAIN mutual LABEL c INTO", "expected a model name", ""),
    ("SELECT * FROM wine TO TRAIN mutual WITH a = 1, a = 2 LABEL c INTO m", "given twice", "a = 2"),
    ("SELECT * FROM wine TO TRAIN mutual WITH a = [1, 2 LABEL c INTO m", "expected ','", "LABEL c"),
    ("SELECT * FROM wine TO TRAIN mutual WITH a = 1 LABEL c INTO m extra", "after the end", "extra"),
    ("SELECT * FROM wine TO TRAIN mutual WITH a = 1 @ LABEL c INTO m", "character '@'", "@"),
    ("SELECT * FROM wine TO PREDICT cultivar USING m", "table.column", "cultivar"),
    ("SELECT * FROM wine", "expected TO TRAIN", ""),
    ("SELEC * FROM wine TO TRAIN mutual LABEL c INTO m", "Syntax error in the SELECT", "FROM"),
    ("DROP TABLE wine TO TRAIN mutual LABEL c INTO m", "is DROP, not a SELECT", "DROP"),
    ("SELECT 1; DELETE FROM wine TO TRAIN mutual LABEL c INTO m", "2 statements", "SELECT 1"),
    ("ATTACH 'x.db' AS x TO TRAIN mutual LABEL c INTO m", "is ATTACH", "ATTACH"),
])
def test_errors_point_at_the_problem(text, message, at):
    with pytest.raises(SqlSyntaxError, match=re.escape(message)) as caught:
        parse_statement(text, "sqlite")
    expected = text.index(at) if at else len(text)
    assert caret_column(caught.value) == expected, str(caught.value)
    assert caught.value.exit_code == 2


def test_cli_prints_the_statement_with_a_caret_and_exits_2(tmp_path):
    done = run_cli("sql", "SELECT * FROM wine TO TRAIN mutual WITH train.epochs = LABEL c INTO m",
                   "--db", str(tmp_path / "none.db"), "--models", str(tmp_path / "models"))
    assert done.returncode == 2, done.stderr
    assert "expected a value" in done.stderr and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    caret = lines[-1].index("^")
    assert lines[-2][caret:].startswith("LABEL c")
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "models").exists()
