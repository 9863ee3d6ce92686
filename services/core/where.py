"""The ``--where`` query expression language.

A hand-written tokenizer and recursive-descent parser turn text such as
``detector = 12 AND exposure IN (903334, 903336..903340)`` into a small typed AST, which
:func:`to_sql` compiles to a SQLAlchemy Core boolean expression.

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

import decimal
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

import sqlalchemy

from services.core.errors import ExpressionError

__all__ = [
    "MAX_IN_VALUES",
    "And",
    "Comparison",
    "Expr",
    "Identifier",
    "InList",
    "Literal",
    "LiteralValue",
    "Not",
    "Operand",
    "Or",
    "Range",
    "identifiers",
    "parse",
    "to_sql",
]

MAX_IN_VALUES = 100_000
"""Most values one IN list may expand to, so a typo like ``1..10000000`` fails early."""

_MAX_DEPTH = 100
"""Deepest nesting of parentheses and NOTs; stops a hostile input exhausting the stack."""

LiteralValue: TypeAlias = int | float | str | bool | None

# --- AST ----------------------------------------------------------------------------------------
# ``column`` is where the node starts in the text (1-based, 0 if built by hand); it is left out
# of equality so hand-built trees compare equal to parsed ones.


@dataclass(frozen=True)
class Identifier:
    name: str
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Literal:
    value: LiteralValue
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Range:
    """Integers ``start..stop`` inclusive, every ``stride``-th."""

    start: int
    stop: int
    stride: int = 1
    column: int = field(default=0, compare=False)

    def values(self) -> range:
        return range(self.start, self.stop + 1, self.stride)


Operand: TypeAlias = Identifier | Literal


@dataclass(frozen=True)
class Comparison:
    op: str  # one of = != < <= > >= ('<>' is normalised to '!=')
    left: Operand
    right: Operand


@dataclass(frozen=True)
class InList:
    operand: Operand
    items: tuple[Literal | Range, ...]
    negated: bool = False


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]


Expr: TypeAlias = Comparison | InList | Not | And | Or

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


def _error(column: int, message: str) -> ExpressionError:
    return ExpressionError(f"bad --where expression at column {column}: {message}")


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
                raise _error(column, f"malformed identifier '{word}.'")
            if word.upper() in _KEYWORDS:
                token = _Token(_Kind.KEYWORD, word, word.upper(), column)
            else:
                token = _Token(_Kind.NAME, word, word, column)
        elif op := next((op for op in _OPERATORS if text.startswith(op, pos)), None):
            token = _Token(_Kind.OP, op, "!=" if op == "<>" else op, column)
        elif punct := next((p for p in _PUNCTUATION if text.startswith(p, pos)), None):
            token = _Token(_PUNCTUATION[punct], punct, punct, column)
        else:
            raise _error(column, f"unexpected character {char!r}")
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
        raise _error(match.start() + 1, f"malformed number '{text[match.start() : bad.end()]}'")
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
                raise _error(
                    pos + 1,
                    f"unknown escape '\\{escaped}' in string (only \\\\, \\' and \\\" are allowed)",
                )
            chars.append(escaped)
            pos += 2
        else:
            chars.append(text[pos])
            pos += 1
    if pos >= len(text):
        raise _error(start + 1, f"unterminated string: no closing {quote} for this opening one")
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
            raise _error(1, "the expression is empty")
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
        return _error(token.column, f"expected {what}{after}, got {token.describe()}")

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
            raise _error(
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
                    raise _error(
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
                raise _error(
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
        _check_list_size(items)
        return tuple(items)

    def _in_item(self) -> Literal | Range:
        first = self._peek()
        literal = self._literal()
        if literal is None:
            raise self._expected("a value or range")
        if literal.value is None:
            # "x IN (NULL)" is never true in SQL; refuse it rather than silently match nothing.
            raise _error(first.column, "NULL is not allowed in an IN list; use = NULL")
        if self._peek().kind is not _Kind.RANGE:
            return literal
        if first.kind is not _Kind.INT:
            raise _error(first.column, f"range bounds must be integers, got {first.describe()}")
        self._advance()
        stop = self._expect(_Kind.INT, "an integer")
        stride = 1
        if self._peek().kind is _Kind.COLON:
            self._advance()
            stride_token = self._expect(_Kind.INT, "an integer stride")
            stride = stride_token.value
            if stride <= 0:
                raise _error(
                    stride_token.column,
                    f"range stride must be positive, got {stride_token.describe()}",
                )
        if stop.value < first.value:
            raise _error(
                first.column,
                f"range {first.text}..{stop.text} is empty (its end is before its start)",
            )
        return Range(first.value, stop.value, stride, first.column)


def _check_list_size(items: list[Literal | Range] | tuple[Literal | Range, ...]) -> None:
    total = 0
    for item in items:
        total += len(item.values()) if isinstance(item, Range) else 1
        if total > MAX_IN_VALUES:
            if isinstance(item, Range):
                stride = f":{item.stride}" if item.stride != 1 else ""
                culprit = f"range {item.start}..{item.stop}{stride}"
            else:
                culprit = f"value {item.value!r}"
            raise _error(
                item.column,
                f"{culprit} takes the IN list past {MAX_IN_VALUES} values; "
                "narrow the ranges or split the query",
            )


# --- consumers ----------------------------------------------------------------------------------


def identifiers(expr: Expr) -> set[str]:
    """Every identifier the expression uses (dotted names as written), e.g. to plan joins."""
    match expr:
        case Comparison(left=left, right=right):
            operands: tuple[Operand, ...] = (left, right)
        case InList(operand=operand):
            operands = (operand,)
        case Not(operand=inner):
            return identifiers(inner)
        case And(operands=parts) | Or(operands=parts):
            return set().union(*(identifiers(part) for part in parts))
        case _:
            raise TypeError(f"not a --where expression node: {expr!r}")
    return {operand.name for operand in operands if isinstance(operand, Identifier)}


_COMPARE: dict[str, Callable[[Any, Any], sqlalchemy.ColumnElement[bool]]] = {
    "=": lambda a, b: a == b,  # SQLAlchemy turns "== None" into IS NULL
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_MIRRORED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def to_sql(
    expr: Expr, resolve: Callable[[str], sqlalchemy.ColumnElement[Any]]
) -> sqlalchemy.ColumnElement[bool]:
    """Compile ``expr`` to a SQLAlchemy boolean expression.

    ``resolve`` maps an identifier to a column and raises `ExpressionError` for unknown names;
    that error propagates unchanged.
    """

    def operand(node: Operand) -> Any:
        return resolve(node.name) if isinstance(node, Identifier) else node.value

    match expr:
        case Comparison(op=op, left=Literal() as left, right=Identifier() as right):
            # Put the column on the left so SQLAlchemy binds the literal with the column's type.
            column = resolve(right.name)
            _check_literal_type(right, column, left)
            return _COMPARE[_MIRRORED[op]](column, left.value)
        case Comparison(op=op, left=Identifier() as left, right=Literal() as right):
            column = resolve(left.name)
            _check_literal_type(left, column, right)
            return _COMPARE[op](column, right.value)
        case Comparison(op=op, left=Literal() as left, right=Literal() as right):
            return _COMPARE[op](sqlalchemy.literal(left.value), right.value)
        case Comparison(op=op, left=left, right=right):
            return _COMPARE[op](operand(left), operand(right))
        case InList(operand=lhs, items=items, negated=negated):
            _check_list_size(items)
            values: list[LiteralValue] = []
            for item in items:
                values.extend(item.values() if isinstance(item, Range) else [item.value])
            if isinstance(lhs, Identifier):
                column = resolve(lhs.name)
                for item in items:
                    _check_literal_type(lhs, column, item)
            else:
                column = sqlalchemy.literal(lhs.value)
            # Inline all-integer lists: they are injection-safe, and a 100000-value range would
            # otherwise exceed PostgreSQL's 65535 bound parameters (SQLite's limit varies).
            inline = all(type(v) is int for v in values)
            param: sqlalchemy.BindParameter[Any] = sqlalchemy.bindparam(
                None, values, expanding=True, literal_execute=inline
            )
            return column.not_in(param) if negated else column.in_(param)
        case Not(operand=inner):
            return sqlalchemy.not_(to_sql(inner, resolve))
        case And(operands=parts):
            return sqlalchemy.and_(*(to_sql(part, resolve) for part in parts))
        case Or(operands=parts):
            return sqlalchemy.or_(*(to_sql(part, resolve) for part in parts))
    raise TypeError(f"not a --where expression node: {expr!r}")


# What a column of each Python type is called, and which literal types it accepts: numbers
# for numeric columns (an integer column compared with 2.5 is meaningful), text for text.
_KINDS: tuple[tuple[type, str, tuple[type, ...]], ...] = (
    (bool, "a boolean (TRUE or FALSE)", (bool,)),  # before int: bool is an int subclass
    (int, "an integer", (int, float)),
    (float, "a number", (int, float)),
    (decimal.Decimal, "a number", (int, float)),
    (str, "a string", (str,)),
)


def _check_literal_type(
    name: Identifier, column: sqlalchemy.ColumnElement[Any], item: Literal | Range
) -> None:
    """Refuse a literal whose type cannot match the column's, before the database sees it.

    Otherwise PostgreSQL fails the query with a driver error and SQLite silently matches
    nothing (``detector = 'x'``). NULL fits any column; columns of types without a known
    Python type are not checked.
    """
    value: LiteralValue = item.start if isinstance(item, Range) else item.value
    if value is None:
        return
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return
    for kind, description, accepted in _KINDS:
        if not issubclass(python_type, kind):
            continue
        # bool is an int subclass: TRUE is not a number, and 1 is not a boolean.
        fits = isinstance(value, accepted) and isinstance(value, bool) == (kind is bool)
        if not fits:
            raise _error(item.column, f"{name.name} is {description}, not {_describe(value)}")
        return


def _describe(value: int | float | str | bool) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    return f"the string {value!r}"
