"""The ``--where`` query expression language: the tree an expression is.

A ``--where`` text such as ``detector = 12 AND exposure IN (903334, 903336..903340)`` is parsed
into a small typed tree of the nodes below, then compiled to SQL. What is where:

- this module: the tree (``Comparison``, ``InList``, ``Not``, ``And``, ``Or`` over
  ``Identifier``, ``Literal`` and ``Range``), ``identifiers`` (the names an expression uses),
  and the checks and error both halves share;
- ``where_parser.py``: the grammar, the tokenizer and the parser (``parse``: text to tree);
- ``where_sql.py``: ``to_sql``, the tree as a SQLAlchemy Core boolean expression, with
  literals checked against their columns' types.

Every error is an :class:`ExpressionError` whose one-line message names the problem, the
offending token and its (1-based) column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

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
    "check_in_list_size",
    "expression_error",
    "identifiers",
]

MAX_IN_VALUES = 100_000
"""Most values one IN list may expand to, so a typo like ``1..10000000`` fails early."""

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


def expression_error(column: int, message: str) -> ExpressionError:
    """The error for a problem at ``column`` (1-based) of a ``--where`` text."""
    return ExpressionError(f"bad --where expression at column {column}: {message}")


def check_in_list_size(items: list[Literal | Range] | tuple[Literal | Range, ...]) -> None:
    """Refuse an IN list that expands to more than ``MAX_IN_VALUES`` values (when parsed, and
    again when compiled, for trees built by hand)."""
    total = 0
    for item in items:
        total += len(item.values()) if isinstance(item, Range) else 1
        if total > MAX_IN_VALUES:
            if isinstance(item, Range):
                stride = f":{item.stride}" if item.stride != 1 else ""
                culprit = f"range {item.start}..{item.stop}{stride}"
            else:
                culprit = f"value {item.value!r}"
            raise expression_error(
                item.column,
                f"{culprit} takes the IN list past {MAX_IN_VALUES} values; "
                "narrow the ranges or split the query",
            )


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
