"""One statement of the SQL interface, parsed: a read query (checked by sqlglot) and the clauses after it.

    SELECT ... TO TRAIN <recipe> [WITH k = v, ...] [COLUMN c, ...] LABEL <column> INTO <model>;
    SELECT ... TO PREDICT <table>.<column> [WITH k = v, ...] USING <model>;
    SELECT ... TO EVALUATE <model> LABEL <column>;
    SHOW TRAIN <model>;

The statement is cut at the first ``TO TRAIN`` / ``TO PREDICT`` / ``TO EVALUATE`` outside strings,
comments and parentheses (found with sqlglot's tokenizer, in the database's dialect). The text before it
must be exactly one read query (``peerlearn.data.sql_read.parse_read_query``); the rest follows the grammar
of ``peerlearn.sql.grammar``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Union

from peerlearn.data.sql_read import INSTALL_HINT, NotAReadQuery, parse_read_query
from peerlearn.errors import ConfigError
from peerlearn.sql.grammar import Assignment, Parser, SqlSyntaxError

ACTIONS = ("TRAIN", "PREDICT", "EVALUATE")
MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TrainStatement:
    text: str
    select: str
    recipe: str
    assignments: list[Assignment]
    columns: Optional[list[str]]
    label: str
    model: str
    positions: dict[str, int] = field(default_factory=dict)


@dataclass
class PredictStatement:
    text: str
    select: str
    table: str
    schema: Optional[str]
    column: str
    options: list[Assignment]
    model: str
    positions: dict[str, int] = field(default_factory=dict)
    quoted: set[str] = field(default_factory=set)  # the names of schema/table/column written in double quotes


@dataclass
class EvaluateStatement:
    text: str
    select: str
    model: str
    label: str
    positions: dict[str, int] = field(default_factory=dict)


@dataclass
class ShowTrainStatement:
    text: str
    model: str
    positions: dict[str, int] = field(default_factory=dict)


Statement = Union[TrainStatement, PredictStatement, EvaluateStatement, ShowTrainStatement]


def _sqlglot():
    try:
        import sqlglot
    except ImportError:
        raise ConfigError(f"peerlearn sql needs sqlglot to read statements: {INSTALL_HINT}.") from None
    return sqlglot


QUOTED_TOKENS = {"STRING", "IDENTIFIER", "NATIONAL_STRING", "RAW_STRING", "HEREDOC_STRING", "BIT_STRING",
                 "HEX_STRING", "BYTE_STRING"}


def split_at_action(text: str, dialect: Optional[str]) -> int:
    """Offset of the ``TO`` that starts the extension (outside strings, comments and parentheses).

    Each ``TO TRAIN|PREDICT|EVALUATE`` in the text is a candidate; the first one whose prefix sqlglot's
    tokenizer reads with those two words as its last tokens, outside any parenthesis, is it. Only the
    prefix is tokenized: the clauses after it follow their own grammar.
    """
    sqlglot = _sqlglot()
    for match in re.finditer(r"\bTO\s+(TRAIN|PREDICT|EVALUATE)\b", text, re.IGNORECASE):
        try:
            tokens = sqlglot.tokenize(text[:match.end()], dialect=dialect)
        except sqlglot.errors.SqlglotError:  # e.g. the candidate sits in a quote that is still open
            continue
        if len(tokens) < 2 or any(t.token_type.name in QUOTED_TOKENS for t in tokens[-2:]):
            continue
        to, action = tokens[-2], tokens[-1]
        if to.text.upper() != "TO" or action.text.upper() not in ACTIONS or to.start != match.start():
            continue
        depth = sum({"L_PAREN": 1, "R_PAREN": -1}.get(t.token_type.name, 0) for t in tokens[:-2])
        if depth == 0:
            return to.start
    end = len(text.rstrip().rstrip(";").rstrip())
    raise SqlSyntaxError("Syntax error: expected TO TRAIN, TO PREDICT or TO EVALUATE after the SELECT query "
                         "(or a statement SHOW TRAIN <model>).", text, end)


def check_select(text: str, select: str, dialect: Optional[str]):
    """The sqlglot tree of the query before ``TO``: exactly one read query, or an error with a caret."""
    sqlglot = _sqlglot()
    if not select.strip():
        raise SqlSyntaxError("Syntax error: expected a SELECT query before TO.", text, 0)
    try:
        sqlglot.parse(select, dialect=dialect)
    except sqlglot.errors.ParseError as error:
        detail = error.errors[0] if getattr(error, "errors", None) else {}
        line, column = detail.get("line"), detail.get("col")
        position = 0
        if line and column:  # sqlglot gives the last column of the offending token: point at its start
            lines = select.split("\n")
            length = len(detail.get("highlight") or "x")
            position = sum(len(part) + 1 for part in lines[: line - 1]) + max(column - length, 0)
        message = (detail.get("description") or str(error).splitlines()[0]).strip()
        raise SqlSyntaxError(f"Syntax error in the SELECT query: {message}.", text, position) from None
    except sqlglot.errors.SqlglotError as error:
        raise SqlSyntaxError(f"Syntax error in the SELECT query: {str(error).splitlines()[0]}.", text, 0) from None
    try:
        return parse_read_query(select, dialect, "the query before TO")
    except NotAReadQuery as error:
        raise SqlSyntaxError(f"Refused: {error.reason}.", text, len(select) - len(select.lstrip())) from None


def model_name(parser: Parser, positions: dict[str, int]) -> str:
    token = parser.name("a model name")
    positions["model"] = token.start
    return token.text


def parse_statement(text: str, dialect: Optional[str] = None) -> Statement:
    """Parse one statement (see the module doc); ``SqlSyntaxError`` (exit 2) shows where it goes wrong."""
    if not text.strip():
        raise SqlSyntaxError("Syntax error: the statement is empty.", text, 0)
    if re.match(r"\s*SHOW\b", text, re.IGNORECASE):
        parser, positions = Parser(text), {}
        parser.keyword("SHOW")
        parser.keyword("TRAIN")
        model = model_name(parser, positions)
        parser.finish()
        return ShowTrainStatement(text, model, positions)
    start = split_at_action(text, dialect)
    select = text[:start]
    check_select(text, select, dialect)
    parser = Parser(text, start)
    parser.keyword("TO")
    action = parser.keyword(*ACTIONS)
    statement = {"TRAIN": _train, "PREDICT": _predict, "EVALUATE": _evaluate}[action](parser, text, select.strip())
    parser.finish()
    return statement


def _train(parser: Parser, text: str, select: str) -> TrainStatement:
    positions: dict[str, int] = {}
    recipe = parser.name("a recipe name (see docs/recipes.md)")
    positions["recipe"] = recipe.start
    assignments = []
    if parser.at_keyword("WITH"):
        parser.advance()
        assignments = parser.assignments()
    columns = None
    if parser.at_keyword("COLUMN", "COLUMNS"):
        parser.advance()
        tokens = parser.column_list()
        positions.update({f"column:{t.text}": t.start for t in tokens})
        columns = [t.text for t in tokens]
    parser.keyword("LABEL")
    label = parser.column("the label column")
    positions["label"] = label.start
    parser.keyword("INTO")
    model = model_name(parser, positions)
    return TrainStatement(text, select, recipe.text, assignments, columns, label.text, model, positions)


def _predict(parser: Parser, text: str, select: str) -> PredictStatement:
    positions: dict[str, int] = {"target": parser.current.start}
    tokens = [parser.column("the result table (table.column)")]
    while parser.at_punct("."):
        parser.advance()
        tokens.append(parser.column("a column name after '.'"))
    parts = [t.text for t in tokens]
    quoted = {t.text for t in tokens if t.kind == "quoted"}
    if len(parts) not in (2, 3):
        raise SqlSyntaxError("Syntax error: TO PREDICT names the result as table.column (or schema.table.column).",
                             text, positions["target"])
    schema = parts[0] if len(parts) == 3 else None
    table, column = parts[-2], parts[-1]
    options = []
    if parser.at_keyword("WITH"):
        parser.advance()
        options = parser.assignments()
    parser.keyword("USING")
    model = model_name(parser, positions)
    return PredictStatement(text, select, table, schema, column, options, model, positions, quoted)


def _evaluate(parser: Parser, text: str, select: str) -> EvaluateStatement:
    positions: dict[str, int] = {}
    model = model_name(parser, positions)
    parser.keyword("LABEL")
    label = parser.column("the label column")
    positions["label"] = label.start
    return EvaluateStatement(text, select, model, label.text, positions)
