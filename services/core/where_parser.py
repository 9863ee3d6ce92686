"""The ``--where`` grammar: a hand-written tokenizer and recursive-descent parser.

:func:`parse` turns text into the tree of ``where.py``; ``where_sql.py`` compiles that tree.

Grammar (keywords are case-insensitive; NOT binds tighter than AND, AND tighter than OR)::

    expr       := and_expr (OR and_expr)*
    and_expr   := not_expr (AND not_expr)*
    not_expr   := NOT not_expr | '(' expr ')' | predicate
    predicate  := operand cmp_op operand | operand [NOT] IN '(' item (',' item)* ')'
    operand    := identifier | literal
    item       := literal | integer '..' integer [':' integer]
    identifier := name ('.' name)*
    literal    := integer | float | 'string' | "string" | TRUE | FALSE | NULL
    cmp_op     := '=' | '!=' | '<>' | '<' | '<=' | '>' | '>='

Every syntax error is an :class:`ExpressionError` whose one-line message names the problem,
the offending token and its (1-based) column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from services.core.errors import ExpressionError
from services.core.where import (
    And,
    Comparison,
    Expr,
    Identifier,
    InList,
    Literal,
    LiteralValue,
    Not,
    Operand,
    Or,
    Range,
    check_in_list_size,
    expression_error,
)

__all__ = ["parse"]

_MAX_DEPTH = 100
"""Deepest nesting of parentheses and NOTs; stops a hostile input exhausting the stack."""

# --- tokenizer ----------------------------------------------------------------------------------


class _Kind(Enum):
    NAME = "name"
    KEYWORD = "keyword"
    INT = "integer"
    FLOAT = "float"
    STRING = "string"
    OP = "operator"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    RANGE = ".."
    COLON = ":"
    END = "end"


@dataclass(frozen=True)
class _Token:
    kind: _Kind
    text: str  # exactly as written, for error messages
    value: Any
    column: int

    def describe(self) -> str:
        if self.kind is _Kind.END:
            return "end of input"
        if self.kind is _Kind.STRING:
            return self.text  # already quoted
        return f"'{self.text}'"


_KEYWORDS = {"AND", "OR", "NOT", "IN", "TRUE", "FALSE", "NULL"}
_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_WORDISH = re.compile(r"[\w.]*")
_OPERATORS = ("<=", ">=", "<>", "!=", "=", "<", ">")  # two-character ones first
_PUNCTUATION = {
    "..": _Kind.RANGE,
    "(": _Kind.LPAREN,
    ")": _Kind.RPAREN,
    ",": _Kind.COMMA,
    ":": _Kind.COLON,
}


def _tokenize(text: str) -> Iterator[_Token]:
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        column = pos + 1
        if pos == len(text):
            yield _Token(_Kind.END, "", None, column)
            return
        char = text[pos]
        if char in "'\"":
            token = _string(text, pos)
        elif match := _NUMBER.match(text, pos):
            token = _number(text, match)
        elif match := _NAME.match(text, pos):
            word = match.group()
            if text.startswith(".", match.end()) and not text.startswith("..", match.end()):
                raise expression_error(column, f"malformed identifier '{word}.'")
            if word.upper() in _KEYWORDS:
                token = _Token(_Kind.KEYWORD, word, word.upper(), column)
            else:
                token = _Token(_Kind.NAME, word, word, column)
        elif op := next((op for op in _OPERATORS if text.startswith(op, pos)), None):
            token = _Token(_Kind.OP, op, "!=" if op == "<>" else op, column)
        elif punct := next((p for p in _PUNCTUATION if text.startswith(p, pos)), None):
            token = _Token(_PUNCTUATION[punct], punct, punct, column)
        else:
            raise expression_error(column, f"unexpected character {char!r}")
        pos += len(token.text)
        yield token


def _number(text: str, match: re.Match[str]) -> _Token:
    end = match.end()
    # Glued-on letters or a lone trailing dot ("12abc", "1.") are typos, not two tokens; but
    # "1..5" is an integer followed by a range operator.
    glued = end < len(text) and (text[end].isalnum() or text[end] in "_.")
    if glued and not text.startswith("..", end):
        bad = _WORDISH.match(text, end)
        assert bad is not None  # the pattern matches the empty string
        raise expression_error(
            match.start() + 1, f"malformed number '{text[match.start() : bad.end()]}'"
        )
    word = match.group()
    if any(c in word for c in ".eE"):
        return _Token(_Kind.FLOAT, word, float(word), match.start() + 1)
    return _Token(_Kind.INT, word, int(word), match.start() + 1)


def _string(text: str, start: int) -> _Token:
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text) and text[pos] != quote:
        if text[pos] == "\\" and pos + 1 < len(text):
            # Only quotes and backslash may be escaped, so Windows-style "\n" is not silently
            # turned into "n".
            escaped = text[pos + 1]
            if escaped not in "\\'\"":
                raise expression_error(
                    pos + 1,
                    f"unknown escape '\\{escaped}' in string (only \\\\, \\' and \\\" are allowed)",
                )
            chars.append(escaped)
            pos += 2
        else:
            chars.append(text[pos])
            pos += 1
    if pos >= len(text):
        raise expression_error(
            start + 1, f"unterminated string: no closing {quote} for this opening one"
        )
    return _Token(_Kind.STRING, text[start : pos + 1], "".join(chars), start + 1)


# --- parser -------------------------------------------------------------------------------------


def parse(text: str) -> Expr:
    """Parse a ``--where`` expression; raise `ExpressionError` if it is empty or malformed.

    Callers that treat an empty ``--where`` as "no constraint" must check for that first.
    """
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = list(_tokenize(text))
        self._pos = 0
        self._depth = 0

    def parse(self) -> Expr:
        if self._peek().kind is _Kind.END:
            raise expression_error(1, "the expression is empty")
        expr = self._or()
        if self._peek().kind is not _Kind.END:
            raise self._expected("AND, OR or end of input")
        return expr

    # Token helpers.

    def _peek(self) -> _Token:
        return self._tokens[self._pos]

    def _advance(self) -> _Token:
        token = self._tokens[self._pos]
        if token.kind is not _Kind.END:
            self._pos += 1
        return token

    def _at_keyword(self, keyword: str) -> bool:
        token = self._peek()
        return token.kind is _Kind.KEYWORD and token.value == keyword

    def _expect(self, kind: _Kind, what: str) -> _Token:
        if self._peek().kind is not kind:
            raise self._expected(what)
        return self._advance()

    def _expected(self, what: str) -> ExpressionError:
        """Error for the next token: "expected <what> after <previous token>, got <next>"."""
        token = self._peek()
        after = f" after {self._tokens[self._pos - 1].describe()}" if self._pos else ""
        return expression_error(token.column, f"expected {what}{after}, got {token.describe()}")

    # Grammar rules, loosest-binding first.

    def _or(self) -> Expr:
        operands = [self._and()]
        while self._at_keyword("OR"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> Expr:
        operands = [self._not()]
        while self._at_keyword("AND"):
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _not(self) -> Expr:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise expression_error(
                self._peek().column, f"expression nested more than {_MAX_DEPTH} levels deep"
            )
        try:
            if self._at_keyword("NOT"):
                self._advance()
                return Not(self._not())
            if self._peek().kind is _Kind.LPAREN:
                opening = self._advance()
                expr = self._or()
                if self._peek().kind is not _Kind.RPAREN:
                    token = self._peek()
                    raise expression_error(
                        token.column,
                        f"expected ')' to close '(' at column {opening.column}, "
                        f"got {token.describe()}",
                    )
                self._advance()
                return expr
            return self._predicate()
        finally:
            self._depth -= 1

    def _predicate(self) -> Expr:
        left = self._operand("a condition")
        token = self._peek()
        if token.kind is _Kind.OP:
            self._advance()
            right = self._operand("a value")
            if token.value not in ("=", "!=") and Literal(None) in (left, right):
                raise expression_error(
                    token.column, f"NULL can only be compared with = or !=, not '{token.text}'"
                )
            return Comparison(token.value, left, right)
        negated = self._at_keyword("NOT")
        if negated:
            self._advance()
            if not self._at_keyword("IN"):
                raise self._expected("IN")
        if self._at_keyword("IN"):
            self._advance()
            return InList(left, self._in_items(), negated)
        raise self._expected("a comparison operator or IN")

    def _operand(self, what: str) -> Operand:
        token = self._peek()
        if token.kind is _Kind.NAME:
            self._advance()
            return Identifier(token.value, token.column)
        literal = self._literal()
        if literal is None:
            raise self._expected(what)
        return literal

    def _literal(self) -> Literal | None:
        """Consume a literal if the next token is one."""
        token = self._peek()
        if token.kind in (_Kind.INT, _Kind.FLOAT, _Kind.STRING):
            value: LiteralValue = token.value
        elif token.kind is _Kind.KEYWORD and token.value in ("TRUE", "FALSE", "NULL"):
            value = {"TRUE": True, "FALSE": False, "NULL": None}[token.value]
        else:
            return None
        self._advance()
        return Literal(value, token.column)

    def _in_items(self) -> tuple[Literal | Range, ...]:
        self._expect(_Kind.LPAREN, "'('")
        items = [self._in_item()]
        while self._peek().kind is _Kind.COMMA:
            self._advance()
            items.append(self._in_item())
        self._expect(_Kind.RPAREN, "',' or ')'")
        check_in_list_size(items)
        return tuple(items)

    def _in_item(self) -> Literal | Range:
        first = self._peek()
        literal = self._literal()
        if literal is None:
            raise self._expected("a value or range")
        if literal.value is None:
            # "x IN (NULL)" is never true in SQL; refuse it rather than silently match nothing.
            raise expression_error(first.column, "NULL is not allowed in an IN list; use = NULL")
        if self._peek().kind is not _Kind.RANGE:
            return literal
        if first.kind is not _Kind.INT:
            raise expression_error(
                first.column, f"range bounds must be integers, got {first.describe()}"
            )
        self._advance()
        stop = self._expect(_Kind.INT, "an integer")
        stride = 1
        if self._peek().kind is _Kind.COLON:
            self._advance()
            stride_token = self._expect(_Kind.INT, "an integer stride")
            stride = stride_token.value
            if stride <= 0:
                raise expression_error(
                    stride_token.column,
                    f"range stride must be positive, got {stride_token.describe()}",
                )
        if stop.value < first.value:
            raise expression_error(
                first.column,
                f"range {first.text}..{stop.text} is empty (its end is before its start)",
            )
        return Range(first.value, stop.value, stride, first.column)
