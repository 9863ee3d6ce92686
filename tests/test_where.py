"""Tests for the --where expression language (services/core/where.py, where_parser.py,
where_sql.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from services.core.errors import ExpressionError
from services.core.where import (
    MAX_IN_VALUES,
    And,
    Comparison,
    Expr,
    Identifier,
    InList,
    Literal,
    Not,
    Or,
    Range,
    identifiers,
)
from services.core.where_parser import parse
from services.core.where_sql import to_sql


def eq(name: str, value: Any) -> Comparison:
    return Comparison("=", Identifier(name), Literal(value))


# --- parsing ------------------------------------------------------------------------------------


def test_simple_comparison() -> None:
    assert parse("detector = 12") == eq("detector", 12)


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
def test_comparison_operators(op: str) -> None:
    assert parse(f"x {op} 1") == Comparison(op, Identifier("x"), Literal(1))


def test_angle_brackets_mean_not_equal() -> None:
    assert parse("x <> 1") == Comparison("!=", Identifier("x"), Literal(1))


def test_no_spaces_needed() -> None:
    assert parse("x>=-3 AND(y<>'a')") == And(
        (
            Comparison(">=", Identifier("x"), Literal(-3)),
            Comparison("!=", Identifier("y"), Literal("a")),
        )
    )


def test_precedence_not_and_or() -> None:
    assert parse("a = 1 OR b = 2 AND NOT c = 3") == Or(
        (eq("a", 1), And((eq("b", 2), Not(eq("c", 3)))))
    )


def test_not_binds_tighter_than_and() -> None:
    assert parse("NOT a = 1 AND b = 2") == And((Not(eq("a", 1)), eq("b", 2)))


def test_parentheses_override_precedence() -> None:
    assert parse("(a = 1 OR b = 2) AND c = 3") == And((Or((eq("a", 1), eq("b", 2))), eq("c", 3)))
    assert parse("NOT (a = 1 OR b = 2)") == Not(Or((eq("a", 1), eq("b", 2))))
    assert parse("((a = 1))") == eq("a", 1)


def test_chains_are_flat() -> None:
    assert parse("a = 1 AND b = 2 AND c = 3") == And((eq("a", 1), eq("b", 2), eq("c", 3)))
    assert parse("a = 1 OR b = 2 OR c = 3") == Or((eq("a", 1), eq("b", 2), eq("c", 3)))


def test_double_not() -> None:
    assert parse("NOT NOT a = 1") == Not(Not(eq("a", 1)))


def test_keywords_are_case_insensitive() -> None:
    lower = parse("a in (1) and not b = true or c not in (2) or d = null or e = false")
    mixed = parse("a In (1) AnD NoT b = TrUe Or c NOT in (2) oR d = NULL OR e = False")
    expected = Or(
        (
            And((InList(Identifier("a"), (Literal(1),)), Not(eq("b", True)))),
            InList(Identifier("c"), (Literal(2),), negated=True),
            eq("d", None),
            eq("e", False),
        )
    )
    assert lower == mixed == expected


def test_dotted_identifiers() -> None:
    assert parse("exposure.exposure_time > 30.5") == Comparison(
        ">", Identifier("exposure.exposure_time"), Literal(30.5)
    )
    # A keyword is an ordinary name once it is part of a dotted identifier.
    assert parse("exposure.in = 1") == eq("exposure.in", 1)


def test_identifier_on_both_sides_and_literal_on_left() -> None:
    assert parse("a.x < b.y") == Comparison("<", Identifier("a.x"), Identifier("b.y"))
    assert parse("12 = detector") == Comparison("=", Literal(12), Identifier("detector"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", 12),
        ("-12", -12),
        ("30.5", 30.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("2.5E-1", 0.25),
        ("'HSC-R'", "HSC-R"),
        ('"g"', "g"),
        ("''", ""),
        (r"'O\'Brien'", "O'Brien"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'back\\slash'", "back\\slash"),
        ('"it\'s"', "it's"),
        ("'AND OR ( )'", "AND OR ( )"),
        ("TRUE", True),
        ("false", False),
        ("NULL", None),
    ],
)
def test_literals(text: str, value: Any) -> None:
    expr = parse(f"x = {text}")
    assert isinstance(expr, Comparison) and isinstance(expr.right, Literal)
    # Check the type too: 1 == True and 1 == 1.0 in Python.
    assert type(expr.right.value) is type(value)
    assert expr.right.value == value


def test_in_list_with_ranges() -> None:
    expr = parse("exposure IN (903334, 903336..903340, 1..10:3, -2..2)")
    assert expr == InList(
        Identifier("exposure"),
        (Literal(903334), Range(903336, 903340), Range(1, 10, 3), Range(-2, 2)),
    )
    assert isinstance(expr, InList)
    assert [list(item.values()) for item in expr.items if isinstance(item, Range)] == [
        [903336, 903337, 903338, 903339, 903340],
        [1, 4, 7, 10],
        [-2, -1, 0, 1, 2],
    ]


def test_in_list_single_value_range_and_mixed_literals() -> None:
    assert parse("x IN (5..5)") == InList(Identifier("x"), (Range(5, 5),))
    assert parse("x NOT IN ('a', 2.5, TRUE)") == InList(
        Identifier("x"), (Literal("a"), Literal(2.5), Literal(True)), negated=True
    )


def test_columns_are_recorded() -> None:
    expr = parse("detector = 12 AND exposure IN (903334, 903336..903340)")
    assert isinstance(expr, And)
    first, second = expr.operands
    assert isinstance(first, Comparison) and isinstance(second, InList)
    assert (first.left.column, first.right.column) == (1, 12)
    assert second.operand.column == 19
    assert [item.column for item in second.items] == [32, 40]


def test_ast_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        eq("a", 1).op = "<"  # type: ignore[misc]


def test_identifiers() -> None:
    expr = parse(
        "detector = 12 AND (exposure.exposure_time > visit.x OR 3 < day_obs)"
        " AND NOT band IN ('g') AND 1 = 1"
    )
    assert identifiers(expr) == {
        "detector",
        "exposure.exposure_time",
        "visit.x",
        "day_obs",
        "band",
    }
    assert identifiers(parse("1 = 1")) == set()


# Every error form, with its column. Columns are 1-based; end of input is one past the end.
ERRORS = [
    ("", 1, "the expression is empty"),
    ("   ", 1, "the expression is empty"),
    ("detector =", 11, "expected a value after '=', got end of input"),
    ("detector == 1", 11, "expected a value after '=', got '='"),
    ("detector", 9, "expected a comparison operator or IN after 'detector', got end of input"),
    ("detector 12", 10, "expected a comparison operator or IN after 'detector', got '12'"),
    ("a..b = 1", 2, "expected a comparison operator or IN after 'a', got '..'"),
    ("detector = 12 AND", 18, "expected a condition after 'AND', got end of input"),
    ("a = 1 OR OR b = 2", 10, "expected a condition after 'OR', got 'OR'"),
    ("NOT", 4, "expected a condition after 'NOT', got end of input"),
    (")", 1, "expected a condition, got ')'"),
    ("AND a = 1", 1, "expected a condition, got 'AND'"),
    ("(detector = 1", 14, "expected ')' to close '(' at column 1, got end of input"),
    ("(a = 1 b = 2)", 8, "expected ')' to close '(' at column 1, got 'b'"),
    ("a = 1)", 6, "expected AND, OR or end of input after '1', got ')'"),
    (
        "detector = 12 exposure = 3",
        15,
        "expected AND, OR or end of input after '12', got 'exposure'",
    ),
    ("a = 1 = 2", 7, "expected AND, OR or end of input after '1', got '='"),
    ("band = 'r' 'g'", 12, "expected AND, OR or end of input after 'r', got 'g'"),
    ("detector NOT 5", 14, "expected IN after 'NOT', got '5'"),
    ("detector IN 1", 13, "expected '(' after 'IN', got '1'"),
    ("detector IN ()", 14, "expected a value or range after '(', got ')'"),
    ("detector IN (1,)", 16, "expected a value or range after ',', got ')'"),
    ("detector IN (a)", 14, "expected a value or range after '(', got 'a'"),
    ("detector IN (1 2)", 16, "expected ',' or ')' after '1', got '2'"),
    ("detector IN (1", 15, "expected ',' or ')' after '1', got end of input"),
    ("detector IN (1..)", 17, "expected an integer after '..', got ')'"),
    ("detector IN (1..2.5)", 17, "expected an integer after '..', got '2.5'"),
    ("detector IN (1..5:)", 19, "expected an integer stride after ':', got ')'"),
    ("detector IN (1.5..3)", 14, "range bounds must be integers, got '1.5'"),
    ("detector IN ('a'..3)", 14, "range bounds must be integers, got 'a'"),
    ("detector IN (1..5:0)", 19, "range stride must be positive, got '0'"),
    ("detector IN (1..5:-1)", 19, "range stride must be positive, got '-1'"),
    ("detector IN (5..1)", 14, "range 5..1 is empty (its end is before its start)"),
    ("detector IN (NULL)", 14, "NULL is not allowed in an IN list; use = NULL"),
    ("detector < NULL", 10, "NULL can only be compared with = or !=, not '<'"),
    ("NULL >= detector", 6, "NULL can only be compared with = or !=, not '>='"),
    (
        "x IN (1..99999, 7, 1..2)",
        20,
        "range 1..2 takes the IN list past 100000 values; narrow the ranges or split the query",
    ),
    (
        "x IN (1..200000:2, 'a')",
        20,
        "value 'a' takes the IN list past 100000 values; narrow the ranges or split the query",
    ),
    (
        "x IN (0..400000:2)",
        7,
        "range 0..400000:2 takes the IN list past 100000 values; "
        "narrow the ranges or split the query",
    ),
    ("detector = $", 12, "unexpected character '$'"),
    ("detector = 12 && b = 1", 15, "unexpected character '&'"),
    ("x = - 1", 5, "unexpected character '-'"),
    ("detector = 12abc", 12, "malformed number '12abc'"),
    ("x = 1.", 5, "malformed number '1.'"),
    ("x = 1.2.3", 5, "malformed number '1.2.3'"),
    ("x>=-3AND y = 1", 4, "malformed number '-3AND'"),
    ("exposure. = 1", 1, "malformed identifier 'exposure.'"),
    ("x = 'abc", 5, "unterminated string: no closing ' for this opening one"),
    ("x = \"abc'", 5, 'unterminated string: no closing " for this opening one'),
    ("x = 'abc\\'", 5, "unterminated string: no closing ' for this opening one"),
    (r"x = 'a\nb'", 7, r"unknown escape '\n' in string (only \\, \' and \" are allowed)"),
    ("(" * 101 + "a = 1" + ")" * 101, 101, "expression nested more than 100 levels deep"),
    ("NOT " * 101 + "a = 1", 401, "expression nested more than 100 levels deep"),
]


@pytest.mark.parametrize(("text", "column", "message"), ERRORS)
def test_parse_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert str(info.value) == f"bad --where expression at column {column}: {message}"
    assert info.value.code == "bad_expression"
    assert "\n" not in str(info.value)


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert parse("(" * 99 + "a = 1" + ")" * 99) == eq("a", 1)


# --- execution against SQLite -------------------------------------------------------------------

METADATA = sa.MetaData()
OBS = sa.Table(
    "obs",
    METADATA,
    sa.Column("exposure", sa.BigInteger, primary_key=True),
    sa.Column("detector", sa.Integer, nullable=False),
    sa.Column("physical_filter", sa.String(32), nullable=False),
    sa.Column("band", sa.String(8), nullable=False),
    sa.Column("exposure_time", sa.Float, nullable=False),
    sa.Column("observation_type", sa.String(16), nullable=False),
    sa.Column("day_obs", sa.Integer, nullable=False),
    sa.Column("can_see_sky", sa.Boolean, nullable=False),
    sa.Column("note", sa.String(64), nullable=True),
)
ROWS = [
    (903334, 12, "HSC-R", "r", 30.0, "science", 20240101, True, None),
    (903336, 12, "HSC-G", "g", 45.5, "science", 20240102, True, "O'Brien"),
    (903337, 13, "HSC-I", "i", 0.0, "bias", 20231231, False, None),
    (903338, 12, "HSC-R", "r", 30.5, "science", 20240105, True, 'focus "test"'),
    (903340, 50, "HSC-G", "g", 60.0, "flat", 20240110, False, None),
    (903342, 12, "HSC-Z", "z", 31.0, "science", 20240110, True, None),
]
ALL = {row[0] for row in ROWS}

# Names a user may write: bare dimension/field names plus "exposure.<field>".
COLUMNS: dict[str, sa.ColumnElement[Any]] = {
    "exposure": OBS.c.exposure,
    "exposure.id": OBS.c.exposure,
    "detector": OBS.c.detector,
    "physical_filter": OBS.c.physical_filter,
    "band": OBS.c.band,
    "day_obs": OBS.c.day_obs,
    "note": OBS.c.note,
    "exposure.exposure_time": OBS.c.exposure_time,
    "exposure.observation_type": OBS.c.observation_type,
    "exposure.day_obs": OBS.c.day_obs,
    "exposure.can_see_sky": OBS.c.can_see_sky,
}


def resolve(name: str) -> sa.ColumnElement[Any]:
    try:
        return COLUMNS[name]
    except KeyError:
        raise ExpressionError(f"unknown name {name!r} in --where expression") from None


@pytest.fixture(scope="module")
def connection() -> Iterator[sa.Connection]:
    engine = sa.create_engine("sqlite://")
    METADATA.create_all(engine)
    with engine.begin() as conn:
        conn.execute(OBS.insert(), [dict(zip(OBS.c.keys(), row, strict=True)) for row in ROWS])
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def run(connection: sa.Connection, expr: Expr) -> set[int]:
    stmt = sa.select(OBS.c.exposure).where(to_sql(expr, resolve))
    return set(connection.scalars(stmt))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("detector = 12 AND exposure IN (903334, 903336..903340)", {903334, 903336, 903338}),
        (
            "physical_filter = 'HSC-R' OR NOT (band != \"g\")",
            {903334, 903336, 903338, 903340},
        ),
        ("exposure.exposure_time > 30.5", {903336, 903340, 903342}),
        ("exposure.exposure_time >= 30.5", {903336, 903338, 903340, 903342}),
        (
            "exposure.observation_type = 'science' AND day_obs >= 20240102",
            {903336, 903338, 903342},
        ),
        ("exposure IN (903334..903342:4)", {903334, 903338, 903342}),
        ("exposure NOT IN (903334..903338)", {903340, 903342}),
        ("NOT exposure IN (903334..903338)", {903340, 903342}),
        ("detector IN (-5..12:17)", {903334, 903336, 903338, 903342}),
        ("12 < detector", {903337, 903340}),
        ("20240105 <= exposure.day_obs", {903338, 903340, 903342}),
        ("note = NULL", {903334, 903337, 903340, 903342}),
        ("note != NULL", {903336, 903338}),
        (r"note = 'O\'Brien'", {903336}),
        (r'note = "focus \"test\""', {903338}),
        ("exposure.can_see_sky = FALSE", {903337, 903340}),
        ("exposure.can_see_sky = true AND band <> 'r'", {903336, 903342}),
        ("exposure.day_obs = day_obs AND detector <> 12", {903337, 903340}),
        ("exposure.exposure_time >= detector", ALL - {903337}),
        ("not detector = 12 or band in ('z')", {903337, 903340, 903342}),
        ("physical_filter IN ('HSC-R', 'HSC-Z')", {903334, 903338, 903342}),
        ("day_obs > 2.024e7", ALL - {903337}),
        ("NOT NOT band = 'r'", {903334, 903338}),
        ("(band = 'g' OR band = 'r') AND (detector = 50 OR day_obs < 20240102)", {903334, 903340}),
        ("1 = 1", ALL),
        ("1 = 0", set()),
        ("3 IN (1..5)", ALL),
        ("'x' NOT IN ('x')", set()),
    ],
)
def test_execution(connection: sa.Connection, text: str, expected: set[int]) -> None:
    assert run(connection, parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("detctor = 12", "detctor"),
        ("detector = 12 AND exposure.nope > 1", "exposure.nope"),
        ("12 = visit", "visit"),
        ("detector < visit.id", "visit.id"),
        ("NOT tract IN (1..3)", "tract"),
    ],
)
def test_unknown_identifier_error_propagates(
    connection: sa.Connection, text: str, unknown: str
) -> None:
    expr = parse(text)  # parsing knows nothing of names; only resolving fails
    with pytest.raises(ExpressionError, match=f"unknown name '{unknown}'"):
        to_sql(expr, resolve)


def test_largest_range_runs(connection: sa.Connection) -> None:
    text = f"exposure IN (903300..{903300 + MAX_IN_VALUES - 1})"
    assert run(connection, parse(text)) == ALL


def test_to_sql_guards_hand_built_ranges() -> None:
    expr = InList(Identifier("exposure"), (Range(1, MAX_IN_VALUES + 1),))
    with pytest.raises(ExpressionError, match="past 100000 values"):
        to_sql(expr, resolve)


def test_integer_lists_are_inlined_and_strings_bound() -> None:
    # Inlined integers cannot hit PostgreSQL's 65535 bound-parameter limit; strings stay bound.
    def render(text: str) -> tuple[str, dict[str, Any]]:
        stmt = sa.select(OBS.c.exposure).where(to_sql(parse(text), resolve))
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
        compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        return str(compiled), dict(compiled.params)

    sql, params = render("exposure IN (1..3, 7)")
    assert "IN (1, 2, 3, 7)" in sql and params == {}
    sql, params = render(r"band IN ('g', 'r\'; DROP TABLE obs; --')")
    assert "DROP" not in sql
    assert sorted(params.values()) == ["g", "r'; DROP TABLE obs; --"]


def test_comparison_binds_literal_with_column_type() -> None:
    # The literal-on-the-left form is flipped so the column drives the bound type.
    clause = to_sql(parse("2 < detector"), resolve)
    assert str(clause) == "obs.detector > :detector_1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detector = 'x'", "column 12: detector is an integer, not the string 'x'"),
        ("'2' < detector", "column 1: detector is an integer, not the string '2'"),
        ("exposure IN (1, '2')", "column 17: exposure is an integer, not the string '2'"),
        ("detector = TRUE", "column 12: detector is an integer, not TRUE"),
        ("exposure.exposure_time > 'long'", "exposure_time is a number, not the string 'long'"),
        ("band = 1", "column 8: band is a string, not the integer 1"),
        ("band IN ('g', 2.5)", "column 15: band is a string, not the number 2.5"),
        ("band NOT IN (1..3)", "column 14: band is a string, not the integer 1"),
        ("exposure.can_see_sky = 1", "exposure.can_see_sky is a boolean (TRUE or FALSE), not"),
        ("exposure.can_see_sky = 'yes'", "can_see_sky is a boolean (TRUE or FALSE), not the st"),
        ("detector = 12 AND (band = 'r' OR day_obs = '2024')", "day_obs is an integer, not"),
    ],
)
def test_literal_of_the_wrong_type_is_refused(text: str, message: str) -> None:
    # Caught before SQL: PostgreSQL would fail on the database, SQLite silently match nothing.
    with pytest.raises(ExpressionError) as err:
        to_sql(parse(text), resolve)
    assert str(err.value).startswith("bad --where expression at column ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "detector = 12",
        "exposure.exposure_time > 30",  # an integer is a number
        "day_obs > 2.024e7",  # and an integer column may be compared with a float
        "band = 'r' AND note = NULL AND detector != NULL",  # NULL fits any column
        "exposure.can_see_sky = FALSE",
        "'x' = 'y' AND 1 != 2",  # literals only, no column to check against
        "exposure.exposure_time >= detector",  # columns only
        "exposure IN (1..3, 5)",
    ],
)
def test_literal_of_a_fitting_type_is_accepted(text: str) -> None:
    to_sql(parse(text), resolve)


class _Opaque(sa.types.UserDefinedType[Any]):
    """A column type that does not say which Python type its values have."""

    cache_ok = True

    @property
    def python_type(self) -> type[Any]:
        raise NotImplementedError


@pytest.mark.parametrize("column_type", [_Opaque(), sa.types.NullType(), sa.types.Uuid()])
def test_columns_of_other_types_are_not_checked(column_type: sa.types.TypeEngine[Any]) -> None:
    column = sa.column("anything", column_type)
    to_sql(parse("anything = 'x' AND anything IN (1, 'y', 2.5, TRUE)"), lambda name: column)
