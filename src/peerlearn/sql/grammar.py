"""The extension clauses that follow a SELECT: a tokenizer and a recursive-descent parser.

Grammar (keywords are case-insensitive; ``[x]`` optional, ``x*`` repeated)::

    train      := TRAIN name [WITH assignment ("," assignment)*] [COLUMN column ("," column)*]
                  LABEL column INTO name
    predict    := PREDICT column ("." column)+ [WITH assignment ("," assignment)*] USING name
    evaluate   := EVALUATE name LABEL column
    assignment := key "=" value              key := name ("." (name | integer))*
    value      := number | 'text' | "text" | true | false | null | word | list | mapping
    list       := "[" [value ("," value)*] "]"
    mapping    := "{" [(word | 'text') ":" value ("," ...)*] "}"

A ``word`` is a bare identifier (``mlp``, ``sgd``, ``kl``) and stands for the text; a ``column`` is an
identifier or a double-quoted name. Every error is a ``SqlSyntaxError`` that shows the statement with a
caret under the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from peerlearn.errors import ConfigError


CLAUSE_KEYWORDS = {"WITH", "COLUMN", "COLUMNS", "LABEL", "INTO", "USING"}  # not values: a value is missing


class SqlSyntaxError(ConfigError):
    """A statement that does not follow the grammar; the message points at the position (exit 2)."""

    def __init__(self, message: str, text: str, position: int):
        self.position = position
        super().__init__(f"{message}\n{caret_excerpt(text, position)}")


def caret_excerpt(text: str, position: int) -> str:
    """The line of ``text`` holding ``position`` and a caret under it, with the line and column."""
    position = max(0, min(position, len(text)))
    line_start = text.rfind("\n", 0, position) + 1
    line_end = text.find("\n", position)
    line = text[line_start: line_end if line_end >= 0 else len(text)]
    line_number = text.count("\n", 0, position) + 1
    column = position - line_start
    return f"  line {line_number}, column {column + 1}:\n    {line}\n    {' ' * column}^"


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted, string, number, punct, end
    text: str  # the value: identifier, unquoted string, number text, punctuation
    start: int  # offset in the whole statement

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the statement"
        if self.kind == "string":
            return f"the text {self.text!r}"
        return repr(self.text)


_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<punct>[.,=\[\]{}:;\-+])
""", re.VERBOSE)


def tokenize(text: str, start: int = 0) -> list[Token]:
    """Tokens of ``text[start:]``; an unknown character or an unterminated quote is a ``SqlSyntaxError``."""
    tokens, position = [], start
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            what = "an unterminated quote" if text[position] in "'\"" else f"the character {text[position]!r}"
            raise SqlSyntaxError(f"Syntax error: unexpected {what}.", text, position)
        kind = match.lastgroup
        raw = match.group()
        if kind == "string":
            tokens.append(Token("string", raw[1:-1].replace("''", "'"), position))
        elif kind == "quoted":
            tokens.append(Token("quoted", raw[1:-1].replace('""', '"'), position))
        elif kind != "space":
            tokens.append(Token(kind, raw, position))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


@dataclass
class Assignment:
    key: str  # dotted
    value: Any
    position: int  # of the key
    value_position: int


class Parser:
    """Recursive descent over the tokens of one statement's extension part."""

    def __init__(self, text: str, start: int = 0):
        self.text = text
        self.tokens = tokenize(text, start)
        self.index = 0

    # ------------------------------------------------------------------ primitives
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str, token: Optional[Token] = None) -> SqlSyntaxError:
        token = token or self.current
        return SqlSyntaxError(message, self.text, token.start)

    def advance(self) -> Token:
        token = self.current
        if token.kind != "end":
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        return self.current.kind == "word" and self.current.text.upper() in words

    def at_punct(self, symbol: str) -> bool:
        return self.current.kind == "punct" and self.current.text == symbol

    def keyword(self, *words: str) -> str:
        if not self.at_keyword(*words):
            expected = " or ".join(words)
            raise self.error(f"Syntax error: expected {expected}, found {self.current.describe()}.")
        return self.advance().text.upper()

    def punct(self, symbol: str, context: str = "") -> Token:
        if not self.at_punct(symbol):
            raise self.error(f"Syntax error: expected {symbol!r}{context}, found {self.current.describe()}.")
        return self.advance()

    def name(self, what: str) -> Token:
        """A bare identifier (model names, recipe names, option keys)."""
        if self.current.kind != "word":
            raise self.error(f"Syntax error: expected {what} (letters, digits and _), found "
                             f"{self.current.describe()}.")
        return self.advance()

    def column(self, what: str = "a column name") -> Token:
        """An identifier or a double-quoted name."""
        if self.current.kind not in ("word", "quoted"):
            raise self.error(f"Syntax error: expected {what}, found {self.current.describe()}.")
        return self.advance()

    def finish(self) -> None:
        if self.at_punct(";"):
            self.advance()
        if self.current.kind != "end":
            raise self.error(f"Syntax error: unexpected {self.current.describe()} after the end of the statement.")

    # ------------------------------------------------------------------ clauses
    def assignments(self) -> list[Assignment]:
        """``key = value, key = value, ...`` (at least one); a repeated key is an error."""
        result: list[Assignment] = []
        seen: dict[str, int] = {}
        while True:
            key_token = self.current
            key = self.dotted_key()
            self.punct("=", f" after the key {key!r}")
            value_position = self.current.start
            value = self.value()
            if key in seen:
                raise SqlSyntaxError(f"Syntax error: the key {key!r} is given twice.", self.text, key_token.start)
            seen[key] = key_token.start
            result.append(Assignment(key, value, key_token.start, value_position))
            if not self.at_punct(","):
                return result
            self.advance()

    def dotted_key(self) -> str:
        parts = [self.name("a key such as train.epochs").text]
        while self.at_punct("."):
            self.advance()
            if self.current.kind == "number" and self.current.text.isdigit():
                parts.append(self.advance().text)
            else:
                parts.append(self.name("a key part after '.'").text)
        return ".".join(parts)

    def column_list(self) -> list[Token]:
        columns = [self.column()]
        while self.at_punct(","):
            self.advance()
            columns.append(self.column())
        return columns

    # ------------------------------------------------------------------ values
    def value(self) -> Any:
        token = self.current
        if token.kind == "string" or token.kind == "quoted":
            return self.advance().text
        if token.kind == "number" or (token.kind == "punct" and token.text in "-+"):
            return self.number()
        if token.kind == "word":
            if token.text.upper() in CLAUSE_KEYWORDS:
                raise self.error(f"Syntax error: expected a value, found the keyword {token.text.upper()}.")
            self.advance()
            lowered = token.text.lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            if lowered in ("null", "none"):
                return None
            return token.text
        if self.at_punct("["):
            return self.list_value()
        if self.at_punct("{"):
            return self.mapping_value()
        raise self.error(f"Syntax error: expected a value (a number, 'text', a word, [list] or {{mapping}}), found "
                         f"{token.describe()}.")

    def number(self) -> float | int:
        sign = 1
        if self.current.kind == "punct":
            sign = -1 if self.advance().text == "-" else 1
        if self.current.kind != "number":
            raise self.error(f"Syntax error: expected a number, found {self.current.describe()}.")
        text = self.advance().text
        if re.fullmatch(r"\d+", text):
            return sign * int(text)
        return sign * float(text)

    def list_value(self) -> list[Any]:
        self.punct("[")
        items: list[Any] = []
        if self.at_punct("]"):
            self.advance()
            return items
        while True:
            items.append(self.value())
            if self.at_punct("]"):
                self.advance()
                return items
            self.punct(",", " or ']' in the list")

    def mapping_value(self) -> dict[str, Any]:
        self.punct("{")
        mapping: dict[str, Any] = {}
        if self.at_punct("}"):
            self.advance()
            return mapping
        while True:
            key_token = self.current
            if key_token.kind not in ("word", "string", "quoted"):
                raise self.error(f"Syntax error: expected a key in the mapping, found {key_token.describe()}.")
            self.advance()
            if key_token.text in mapping:
                raise self.error(f"Syntax error: the key {key_token.text!r} is given twice.", key_token)
            self.punct(":", f" after the key {key_token.text!r}")
            mapping[key_token.text] = self.value()
            if self.at_punct("}"):
                self.advance()
                return mapping
            self.punct(",", " or '}' in the mapping")
