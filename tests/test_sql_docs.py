"""docs/sql.md runs as printed: every ```sql block in order on the demo database (peerlearn statements through
``peerlearn.sql.run``, plain SELECTs through sqlite3), its shown output lines appear, its error example is exact."""

import re
import shlex
import sqlite3

import pytest

import peerlearn.sql
from conftest import REPO
from peerlearn.sql.grammar import SqlSyntaxError
from peerlearn.sql.statements import parse_statement

pytest.importorskip("sqlglot")

DOC = (REPO / "docs" / "sql.md").read_text()


def blocks(language: str, text: str = DOC) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def is_peerlearn_statement(text: str) -> bool:
    return bool(re.search(r"\bTO\s+(TRAIN|PREDICT|EVALUATE)\b|^\s*SHOW\s+TRAIN\b", text, re.IGNORECASE))


def test_the_walkthrough_runs_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the doc's paths: demo.db and ./models
    assert blocks("console")[0].startswith("$ peerlearn sql --demo-db demo.db")
    peerlearn.sql.create_demo_db("demo.db")
    statements = blocks("sql")
    assert sum(map(is_peerlearn_statement, statements)) >= 7
    outputs = []
    for statement in statements:
        if is_peerlearn_statement(statement):
            outputs.append(peerlearn.sql.run(statement, db="demo.db").text)
        else:
            with sqlite3.connect("demo.db") as connection:
                rows = connection.execute(statement).fetchall()
            assert len(rows) == 5 and {row[2] for row in rows} <= {"barolo", "grignolino", "barbera"}
            assert all(0 <= row[3] <= 1 for row in rows)
    walkthrough = DOC.split("## Walkthrough")[1].split("\n## ")[0]
    # lines the doc shows, except elisions, measured numbers (they belong to this machine) and the plain
    # SELECT's result (printed by the database client, checked above)
    shown = [line for block in blocks("text", walkthrough) for line in block.splitlines()
             if "..." not in line and not re.search(r"\d\.\d", line) and "p_barolo" not in line
             and not line.startswith("--")]
    printed = "\n".join(outputs).replace(str(tmp_path) + "/", "")
    missing = [line for line in shown if line.strip() and line.strip() not in printed]
    assert not missing, missing
    assert (tmp_path / "models" / "wine_dml" / "model.safetensors").is_file()
    assert (tmp_path / "models" / "wine_small" / "statement.sql").is_file()


def test_the_error_example_is_what_peerlearn_prints():
    example = DOC.split("## Errors")[1]
    block = blocks("text", example)[0].splitlines()
    command = shlex.split(block[0].removeprefix("$ "))
    with pytest.raises(SqlSyntaxError) as caught:
        parse_statement(command[2], "sqlite")
    assert block[1:] == f"peerlearn sql: {caught.value}".splitlines()
