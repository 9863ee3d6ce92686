"""Compiling a --where expression into a condition on datasets of one type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table, and_, select

from ..core.errors import ExpressionError
from ..core.where_parser import parse
from ..core.where_sql import to_sql
from .datasets import DatasetType
from .records import DimensionRecords


def dataset_where(records: DimensionRecords, table: Table, dt: DatasetType, expr: str) -> Any:
    """``expr`` over data ID keys (``detector = 5``) or fields of their dimension records
    (``exposure.observation_type = 'bias'``), as a condition on the dataset table."""
    universe = records.universe
    tree = parse(expr)
    joins: dict[str, Any] = {}

    def resolve(name: str) -> Any:
        element_name, dot, field = name.partition(".")
        if not dot:
            if name in dt.dimensions:
                return table.c[name]
            raise ExpressionError(
                f"{dt.name} has no dimension {name!r}; its dimensions: {', '.join(dt.dimensions)}"
            )
        if element_name not in dt.dimensions:
            raise ExpressionError(f"{name!r}: {element_name} is not a dimension of {dt.name}")
        element = universe[element_name]
        rec = records.table(element_name)
        if field not in rec.c or field.startswith("timespan_"):
            raise ExpressionError(f"{element_name} has no field {field!r}")
        joins[element_name] = (rec, element)
        return rec.c[field]

    condition = to_sql(tree, resolve)
    if not joins:
        return condition
    # Record fields constrain the dataset through EXISTS over the matching records.
    return _correlated(table, joins, condition)


def _correlated(table: Table, joins: Mapping[str, Any], condition: Any) -> Any:
    """Rewrite a condition over record columns as EXISTS over the joined record tables."""
    froms: list[Any] = []
    match: list[Any] = []
    for element_name, (rec, element) in joins.items():
        froms.append(rec)
        match.extend(rec.c[d] == table.c[d] for d in element.requires)
        match.append(rec.c[element.key.name] == table.c[element_name])
    return select(1).select_from(*froms).where(and_(*match), condition).exists()
