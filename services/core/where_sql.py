"""Compiling a ``--where`` tree (``where.py``) to a SQLAlchemy Core boolean expression.

The caller says what each identifier means (``resolve``: name to column); a literal is
checked against its column's type here, before the database sees it.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import sqlalchemy

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

__all__ = ["to_sql"]


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
            check_in_list_size(items)
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
            raise expression_error(
                item.column, f"{name.name} is {description}, not {_describe(value)}"
            )
        return


def _describe(value: int | float | str | bool) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    return f"the string {value!r}"
