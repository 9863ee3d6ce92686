"""Calibration certification and lookup: the registry's core promise.

Every test runs on SQLite and on PostgreSQL (the ``butler`` fixture). Times are written in days
after 2024-01-01T00:00:00 TAI (``day(3.5)``) so validity ranges read like a calendar; lookups
assert exact dataset ids and ranges, never just "something was found".
"""

from __future__ import annotations

import functools
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from astropy.time import Time

from services.butler import Butler
from services.core.errors import (
    CalibrationAmbiguityError,
    CalibrationOverlapError,
    CollectionError,
    CollectionFrozenError,
    CollectionTypeError,
    DatasetNotFoundError,
    MissingCollectionError,
    MissingDatasetTypeError,
    NotACalibrationError,
    ObsbusError,
)
from services.core.timespan import Timespan, now_ns, ns_to_iso, time_to_ns
from services.registry.collections import CollectionType
from services.registry.datasets import DatasetRef, DatasetType
from services.registry.registry import CalibrationMatch, Registry
from tests.support.records import add_exposure

INSTRUMENT = "DummyCam"
CALIB = "DummyCam/calib"
CALIB_NEW = "DummyCam/calib/new"
CHAIN = "DummyCam/calib/current"

T0 = time_to_ns(Time("2024-01-01T00:00:00", scale="tai"))
DAY = 86_400 * 10**9

BIAS = DatasetType("bias", ("instrument", "detector"), "Image", is_calibration=True)
FLAT = DatasetType(
    "flat", ("instrument", "detector", "physical_filter"), "Image", is_calibration=True
)
DARK = DatasetType("dark", ("instrument", "detector"), "Image", is_calibration=True)
RAW = DatasetType("raw", ("instrument", "detector", "exposure"), "Image")


# --- helpers ------------------------------------------------------------------------------------


def day(n: float) -> int:
    """TAI nanoseconds ``n`` days after 2024-01-01T00:00:00."""
    return T0 + round(n * DAY)


def span(begin: float | None, end: float | None) -> Timespan:
    """``[day(begin), day(end))``; None is unbounded."""
    return Timespan(None if begin is None else day(begin), None if end is None else day(end))


def instant(n: float) -> Timespan:
    return Timespan(day(n), day(n) + 1)


def det(detector: int, **more: Any) -> dict[str, Any]:
    return {"instrument": INSTRUMENT, "detector": detector, **more}


def add_calib(registry: Registry, dataset_type: str, run: str, **data_id: Any) -> DatasetRef:
    """Insert one calibration dataset (registry only: these tests need no files)."""
    ref = registry.make_ref(dataset_type, {"instrument": INSTRUMENT, **data_id}, run)
    registry.insert_datasets([ref])
    return ref


Found = tuple[uuid.UUID, Timespan | None, str]


def summary(match: CalibrationMatch | None) -> Found | None:
    """What a lookup returned, reduced to comparable values: (dataset id, range, collection)."""
    return None if match is None else (match.ref.id, match.timespan, match.collection)


def find(
    registry: Registry,
    data_id: Mapping[str, Any],
    when: Timespan,
    collections: Sequence[str] = (CALIB,),
    dataset_type: str = "bias",
    as_of: int | None = None,
) -> Found | None:
    return summary(
        registry.find_calibration(dataset_type, data_id, list(collections), when, as_of=as_of)
    )


def contents(
    registry: Registry, collection: str = CALIB, as_of: int | None = None
) -> list[tuple[str, str, uuid.UUID, Timespan]]:
    """Live validity rows of a CALIBRATION collection: (type, data ID, dataset id, range)."""
    rows = registry.query_calibrations(collection, as_of=as_of)
    return sorted(
        ((r.dataset_type.name, r.data_id.key, r.id, ts) for r, ts in rows),
        key=lambda row: (row[0], row[1], row[3].db_begin),
    )


def assert_user_error(err: BaseException, *parts: str) -> None:
    """An obsbus error with a one-line message that mentions every part."""
    assert isinstance(err, ObsbusError), f"{type(err).__name__} is not an ObsbusError: {err}"
    message = str(err)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.fixture
def registry(butler: Butler) -> Registry:
    """DummyCam's registry with bias, dark, flat (calibrations) and raw (not one) registered."""
    for dataset_type in (BIAS, DARK, FLAT, RAW):
        butler.registry.register_dataset_type(dataset_type)
    butler.registry.register_collection(CALIB, CollectionType.CALIBRATION)
    return butler.registry


# --- certify ------------------------------------------------------------------------------------


def test_validity_is_half_open(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "bias/run1", detector=0)
    assert registry.certify(CALIB, [bias], span(0, 31)) == 1

    expected = (bias.id, span(0, 31), CALIB)
    assert find(registry, det(0), Timespan(day(0), day(0) + 1)) == expected  # begin included
    assert find(registry, det(0), Timespan(day(31) - 1, day(31))) == expected
    assert find(registry, det(0), Timespan(day(31), day(31) + 1)) is None  # end excluded
    assert find(registry, det(0), Timespan(day(0) - 1, day(0))) is None
    assert find(registry, det(0), span(-5, 40)) == expected  # a range covering it all
    assert find(registry, det(3), instant(3)) is None  # another detector has nothing
    assert contents(registry) == [("bias", bias.data_id.key, bias.id, span(0, 31))]

    # Unbounded ends, on detector 1.
    old = add_calib(registry, "bias", "bias/old", detector=1)
    new = add_calib(registry, "bias", "bias/new", detector=1)
    registry.certify(CALIB, [old], span(None, 10))
    registry.certify(CALIB, [new], span(10, None))
    long_ago = Timespan(-(10**18), -(10**18) + 1)
    assert find(registry, det(1), long_ago) == (old.id, span(None, 10), CALIB)
    assert find(registry, det(1), instant(10_000)) == (new.id, span(10, None), CALIB)
    assert str(span(None, 10)) == "[-inf, 2024-01-11T00:00:00)"
    assert str(span(10, None)) == "[2024-01-11T00:00:00, +inf)"


def test_overlap_is_rejected_with_the_ranges_in_the_way_and_nothing_written(
    registry: Registry,
) -> None:
    first = add_calib(registry, "bias", "bias/run1", detector=0)
    registry.certify(CALIB, [first], span(0, 31))
    before = contents(registry)

    # A batch where only detector 0 clashes: the whole batch is refused.
    clash = add_calib(registry, "bias", "bias/run2", detector=0)
    innocent = add_calib(registry, "bias", "bias/run2", detector=1)
    with pytest.raises(CalibrationOverlapError) as info:
        registry.certify(CALIB, [innocent, clash], span(14, 60))
    err = info.value
    assert_user_error(
        err,
        "bias",
        CALIB,
        "[2024-01-01T00:00:00, 2024-02-01T00:00:00)",
        "detector=0",
        str(first.id),
    )
    assert "detector=1" not in str(err)
    assert err.code == "validity_overlap"
    assert (err.collection, err.dataset_type) == (CALIB, "bias")
    assert err.conflicts == [f"{first.data_id.key} {span(0, 31)} (dataset {first.id})"]
    assert contents(registry) == before  # the innocent detector 1 was not certified either


OVERLAP_SHAPES: list[
    tuple[tuple[float | None, float | None], tuple[float | None, float | None]]
] = [
    ((0, 31), (30, 40)),  # overlaps the end by one day
    ((0, 31), (-10, 1)),  # overlaps the start
    ((0, 31), (5, 6)),  # inside
    ((0, 31), (None, None)),  # contains it, unbounded
    ((None, 5), (4, None)),  # both unbounded on opposite sides
]


def test_overlap_shapes(registry: Registry) -> None:
    first = add_calib(registry, "bias", "bias/run1", detector=2)
    second = add_calib(registry, "bias", "bias/run2", detector=2)
    for existing, attempt in OVERLAP_SHAPES:
        registry.certify(CALIB, [first], span(*existing))
        with pytest.raises(CalibrationOverlapError) as info:
            registry.certify(CALIB, [second], span(*attempt))
        assert_user_error(info.value, str(span(*existing)), "detector=2")
        assert contents(registry) == [("bias", first.data_id.key, first.id, span(*existing))]
        registry.decertify(CALIB, "bias", Timespan(None, None))


def test_overlap_by_one_nanosecond_is_rejected_and_adjacent_is_fine(registry: Registry) -> None:
    a, b, c = (add_calib(registry, "bias", f"bias/run{i}", detector=0) for i in range(3))
    registry.certify(CALIB, [a], span(0, 10))
    with pytest.raises(CalibrationOverlapError):
        registry.certify(CALIB, [b], Timespan(day(10) - 1, day(20)))
    assert registry.certify(CALIB, [b], span(10, 20)) == 1  # [a, b) then [b, c)
    assert registry.certify(CALIB, [c], span(None, 0)) == 1  # and before it, unbounded

    assert find(registry, det(0), Timespan(day(10) - 1, day(10))) == (a.id, span(0, 10), CALIB)
    assert find(registry, det(0), instant(10)) == (b.id, span(10, 20), CALIB)
    assert find(registry, det(0), Timespan(day(0) - 1, day(0))) == (c.id, span(None, 0), CALIB)
    assert [row[2] for row in contents(registry)] == [c.id, a.id, b.id]


def test_recertifying_the_same_dataset_and_range_is_a_no_op(registry: Registry) -> None:
    refs = [add_calib(registry, "bias", "bias/run1", detector=d) for d in range(2)]
    assert registry.certify(CALIB, refs, span(0, 31)) == 2
    snapshot = contents(registry)
    assert registry.certify(CALIB, refs, span(0, 31)) == 0  # a replay
    assert registry.certify(CALIB, refs[:1], span(0, 31)) == 0
    assert contents(registry) == snapshot

    # A replay mixed with new work certifies only the new part.
    extra = add_calib(registry, "bias", "bias/run1", detector=2)
    assert registry.certify(CALIB, [*refs, extra], span(0, 31)) == 1
    assert len(contents(registry)) == 3

    # The same dataset with a different (overlapping) range is not a replay.
    with pytest.raises(CalibrationOverlapError):
        registry.certify(CALIB, refs[:1], span(0, 32))
    # Another dataset with exactly the same range is not a replay either.
    other = add_calib(registry, "bias", "bias/run2", detector=0)
    with pytest.raises(CalibrationOverlapError):
        registry.certify(CALIB, [other], span(0, 31))
    assert len(contents(registry)) == 3


def test_one_call_with_repeated_refs_or_data_ids(registry: Registry) -> None:
    # Two datasets for one data ID in one call overlap each other: nothing is written.
    a = add_calib(registry, "bias", "bias/run1", detector=0)
    b = add_calib(registry, "bias", "bias/run2", detector=0)
    with pytest.raises(CalibrationOverlapError) as info:
        registry.certify(CALIB, [a, b], span(0, 31))
    assert_user_error(info.value, "detector=0", str(span(0, 31)))
    assert contents(registry) == []
    # The same dataset listed twice is certified once (a duplicated message, say).
    assert registry.certify(CALIB, [a, a], span(0, 31)) == 1
    assert contents(registry) == [("bias", a.data_id.key, a.id, span(0, 31))]


def test_different_data_ids_types_and_collections_never_conflict(registry: Registry) -> None:
    biases = [add_calib(registry, "bias", "run1", detector=d) for d in range(4)]
    flats = [
        add_calib(registry, "flat", "run1", detector=0, physical_filter=f)
        for f in ("dummy_g", "dummy_r", "dummy_i")
    ]
    assert registry.certify(CALIB, biases, span(0, 31)) == 4
    assert registry.certify(CALIB, flats, span(0, 31)) == 3
    darks = [add_calib(registry, "dark", "run1", detector=d) for d in range(4)]
    assert registry.certify(CALIB, darks, span(0, 31)) == 4  # same data IDs as the biases
    registry.register_collection(CALIB_NEW, CollectionType.CALIBRATION)
    assert registry.certify(CALIB_NEW, biases, span(0, 31)) == 4

    for d, bias in enumerate(biases):
        assert find(registry, det(d), instant(3)) == (bias.id, span(0, 31), CALIB)
        found = find(registry, det(d), instant(3), dataset_type="dark")
        assert found == (darks[d].id, span(0, 31), CALIB)
    for flat in flats:
        found = find(registry, flat.data_id, instant(3), dataset_type="flat")
        assert found == (flat.id, span(0, 31), CALIB)
    assert len(contents(registry)) == 11
    assert len(contents(registry, CALIB_NEW)) == 4


def test_only_calibration_types_can_be_certified(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "run1", detector=0)
    add_exposure(registry, 1, "2024-01-02T00:00:00")
    raw_ref = add_calib(registry, "raw", "raw/all", detector=0, exposure=1)
    with pytest.raises(NotACalibrationError) as info:
        registry.certify(CALIB, [bias, raw_ref], span(0, 31))
    assert_user_error(info.value, "'raw'", "is not a calibration type")
    assert contents(registry) == []


def test_unknown_and_wrong_collections_are_clear_errors(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "bias/run1", detector=0)
    registry.register_collection("tagged", CollectionType.TAGGED)

    with pytest.raises(CollectionError) as info:  # a RUN is not a CALIBRATION collection
        registry.certify("bias/run1", [bias], span(0, 1))
    assert_user_error(info.value, "'bias/run1'", "RUN", "CALIBRATION")

    with pytest.raises(CollectionTypeError) as info:
        registry.decertify("tagged", "bias", span(0, 1))
    assert_user_error(info.value, "'tagged'", "TAGGED", "not CALIBRATION")

    with pytest.raises(MissingCollectionError) as info:
        registry.decertify("no/such/calib", "bias", span(0, 1))
    assert_user_error(info.value, "'no/such/calib'")

    with pytest.raises(MissingCollectionError) as info:
        registry.find_calibration("bias", det(0), ["no/such/calib"], instant(0))
    assert_user_error(info.value, "'no/such/calib'")

    with pytest.raises(MissingCollectionError):
        registry.find_calibrations_bulk("bias", ["no/such/calib"], [(det(0), instant(0))])

    with pytest.raises(CollectionTypeError) as info:
        registry.query_calibrations("bias/run1")
    assert_user_error(info.value, "'bias/run1'", "RUN")


def test_certify_into_an_unknown_collection_is_refused(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "bias/run1", detector=0)
    with pytest.raises(MissingCollectionError):
        registry.certify("DummyCam/calbi", [bias], span(0, 1))


def test_certify_refuses_unknown_datasets_and_types(registry: Registry) -> None:
    inserted = add_calib(registry, "bias", "bias/run1", detector=0)
    never_inserted = registry.make_ref("bias", det(1), "bias/run1")
    with pytest.raises(DatasetNotFoundError) as info:
        registry.certify(CALIB, [inserted, never_inserted], span(0, 1))
    assert_user_error(info.value, str(never_inserted.id))
    assert contents(registry) == []

    ghost_type = DatasetType("ghost", ("instrument", "detector"), "Image", is_calibration=True)
    ghost = DatasetRef(uuid.uuid4(), ghost_type, never_inserted.data_id, "bias/run1")
    with pytest.raises(MissingDatasetTypeError) as no_type:
        registry.certify(CALIB, [ghost], span(0, 1))
    assert_user_error(no_type.value, "'ghost'")


# --- decertify ----------------------------------------------------------------------------------


def test_decertify_cuts_a_window_and_splits_only_the_named_data_ids(registry: Registry) -> None:
    b0, b1 = (add_calib(registry, "bias", "bias/run1", detector=d) for d in (0, 1))
    registry.certify(CALIB, [b0, b1], span(0, 60))

    assert registry.decertify(CALIB, "bias", span(31, 45), [det(0)]) == 1
    assert contents(registry) == [
        ("bias", b0.data_id.key, b0.id, span(0, 31)),
        ("bias", b0.data_id.key, b0.id, span(45, 60)),
        ("bias", b1.data_id.key, b1.id, span(0, 60)),
    ]
    assert find(registry, det(0), instant(30.9)) == (b0.id, span(0, 31), CALIB)
    assert find(registry, det(0), instant(31)) is None
    assert find(registry, det(0), Timespan(day(45) - 1, day(45))) is None
    assert find(registry, det(0), instant(45)) == (b0.id, span(45, 60), CALIB)
    assert find(registry, det(1), instant(40)) == (b1.id, span(0, 60), CALIB)

    # The hole is free for another dataset, exactly; overlapping a remainder is not.
    patch = add_calib(registry, "bias", "bias/run2", detector=0)
    with pytest.raises(CalibrationOverlapError) as info:
        registry.certify(CALIB, [patch], span(30, 45))
    assert_user_error(info.value, str(span(0, 31)))
    assert str(span(45, 60)) not in str(info.value)
    assert registry.certify(CALIB, [patch], span(31, 45)) == 1
    assert find(registry, det(0), instant(40)) == (patch.id, span(31, 45), CALIB)


def test_decertify_all_data_ids_with_unbounded_windows(registry: Registry) -> None:
    refs = [add_calib(registry, "bias", "bias/run1", detector=d) for d in range(3)]
    flat = add_calib(registry, "flat", "flat/run1", detector=0, physical_filter="dummy_r")
    registry.certify(CALIB, refs, span(0, 60))
    registry.certify(CALIB, [flat], span(0, 60))

    assert registry.decertify(CALIB, "bias", span(50, None)) == 3  # the tail of every bias
    assert registry.decertify(CALIB, "bias", span(None, 10)) == 3  # and the head
    assert registry.decertify(CALIB, "bias", span(70, 80)) == 0  # nothing there
    assert [(row[1], row[3]) for row in contents(registry) if row[0] == "bias"] == [
        (ref.data_id.key, span(10, 50)) for ref in refs
    ]
    # Flats were not touched: decertify is per dataset type.
    assert [row[2:] for row in contents(registry) if row[0] == "flat"] == [(flat.id, span(0, 60))]

    # Flats are cut by their full data ID (physical_filter included).
    other_filter = det(0, physical_filter="dummy_g")
    assert registry.decertify(CALIB, "flat", span(None, None), [other_filter]) == 0
    assert registry.decertify(CALIB, "flat", span(None, None), [flat.data_id]) == 1
    assert [row for row in contents(registry) if row[0] == "flat"] == []
    assert registry.decertify(CALIB, "bias", Timespan(None, None)) == 3
    assert contents(registry) == []


# --- lookups ------------------------------------------------------------------------------------


def test_a_range_spanning_two_validity_ranges_is_ambiguous(registry: Registry) -> None:
    a, b = (add_calib(registry, "bias", f"bias/run{i}", detector=0) for i in (1, 2))
    other = add_calib(registry, "bias", "bias/run1", detector=1)
    registry.certify(CALIB, [a, other], span(0, 10))
    registry.certify(CALIB, [b], span(10, 20))

    with pytest.raises(CalibrationAmbiguityError) as info:
        registry.find_calibration("bias", det(0), [CALIB], span(9, 11))
    assert_user_error(info.value, "bias", "detector=0", CALIB, str(span(0, 10)), str(span(10, 20)))
    with pytest.raises(CalibrationAmbiguityError):
        registry.find_calibration("bias", det(0), [CALIB], Timespan(None, None))
    # Only ranges of the same data ID count: detector 1 has one range.
    assert find(registry, det(1), Timespan(None, None)) == (other.id, span(0, 10), CALIB)


def test_lookup_by_exposure_resolves_flats_through_the_exposure_filter(butler: Butler) -> None:
    registry = butler.registry
    for dataset_type in (BIAS, FLAT):
        registry.register_dataset_type(dataset_type)
    flats = {
        f: add_calib(registry, "flat", "flat/run1", detector=1, physical_filter=f)
        for f in ("dummy_g", "dummy_r")
    }
    registry.register_collection(CALIB, CollectionType.CALIBRATION)
    registry.certify(CALIB, list(flats.values()), span(0, 30))
    later_r = add_calib(registry, "flat", "flat/run2", detector=1, physical_filter="dummy_r")
    registry.certify(CALIB, [later_r], span(30, None))

    add_exposure(registry, 101, "2024-01-05T03:00:00", physical_filter="dummy_g")
    add_exposure(registry, 102, "2024-01-05T03:01:00", physical_filter="dummy_r")
    add_exposure(registry, 103, "2024-02-05T03:00:00", physical_filter="dummy_r")
    add_exposure(registry, 104, "2024-02-05T03:00:00", physical_filter="dummy_i")
    add_exposure(registry, 105, "2024-01-30T23:59:45", physical_filter="dummy_r")  # straddles

    queries = [{"instrument": INSTRUMENT, "exposure": e, "detector": 1} for e in range(101, 106)]
    expanded = registry.with_exposures(queries)
    assert [d["physical_filter"] for d, _ in expanded] == [
        "dummy_g",
        "dummy_r",
        "dummy_r",
        "dummy_i",
        "dummy_r",
    ]
    assert expanded[0][0]["band"] == "g"
    assert expanded[0][1] == Timespan.from_times("2024-01-05T03:00:00", "2024-01-05T03:00:30")

    results = [find(registry, d, ts, dataset_type="flat") for d, ts in expanded[:4]]
    assert results == [
        (flats["dummy_g"].id, span(0, 30), CALIB),
        (flats["dummy_r"].id, span(0, 30), CALIB),
        (later_r.id, span(30, None), CALIB),
        None,  # no dummy_i flat
    ]
    with pytest.raises(CalibrationAmbiguityError) as info:
        find(registry, expanded[4][0], expanded[4][1], dataset_type="flat")
    assert_user_error(info.value, "flat", "physical_filter=dummy_r", str(span(0, 30)))

    # Butler.find expands the exposure's filter itself.
    match = butler.find("flat", queries[1], [CALIB], timespan=expanded[1][1])
    assert summary(match) == (flats["dummy_r"].id, span(0, 30), CALIB)
    assert match.ref.data_id["physical_filter"] == "dummy_r"
    with pytest.raises(DatasetNotFoundError) as not_found:
        butler.find("flat", queries[3], [CALIB], timespan=expanded[3][1])
    assert_user_error(not_found.value, "flat", CALIB)


def test_chained_collections_first_match_wins(registry: Registry) -> None:
    base = add_calib(registry, "bias", "bias/base", detector=0)
    newer = add_calib(registry, "bias", "bias/newer", detector=0)
    for name in (CALIB, CALIB_NEW):
        registry.register_collection(name, CollectionType.CALIBRATION)
    registry.certify(CALIB, [base], span(None, None))
    registry.certify(CALIB_NEW, [newer], span(20, 40))
    registry.set_chain(CHAIN, [CALIB_NEW, CALIB])
    registry.set_chain("outer", [CHAIN])  # nested chains flatten depth-first

    for collections in ([CHAIN], ["outer"], [CALIB_NEW, CALIB]):
        assert find(registry, det(0), instant(10), collections) == (
            base.id,
            span(None, None),
            CALIB,
        )
        assert find(registry, det(0), instant(25), collections) == (
            newer.id,
            span(20, 40),
            CALIB_NEW,
        )
    # The first collection with matches decides: two there is ambiguous, even though CALIB
    # further down the chain has a single range covering it all.
    registry.certify(CALIB_NEW, [base], span(40, 50))
    with pytest.raises(CalibrationAmbiguityError) as info:
        find(registry, det(0), span(30, 45), [CHAIN])
    assert_user_error(info.value, CALIB_NEW, str(span(20, 40)), str(span(40, 50)))

    registry.set_chain(CHAIN, [CALIB, CALIB_NEW])
    assert find(registry, det(0), instant(25), [CHAIN]) == (base.id, span(None, None), CALIB)
    assert find(registry, det(0), instant(25), ["outer"]) == (base.id, span(None, None), CALIB)


# --- history ------------------------------------------------------------------------------------


def test_as_of_replays_every_earlier_answer(registry: Registry) -> None:
    """After each step note now_ns() and what lookups say; later, as_of must say it again."""
    registry.register_collection(CALIB_NEW, CollectionType.CALIBRATION)
    a = {d: add_calib(registry, "bias", "bias/a", detector=d) for d in (0, 1)}
    b0 = add_calib(registry, "bias", "bias/b", detector=0)
    c = {d: add_calib(registry, "bias", "bias/c", detector=d) for d in (0, 1)}
    probes = [(d, instant(t)) for d in (0, 1) for t in (5, 40, 70)]

    def observe(as_of: int | None = None) -> dict[str, Any]:
        chain = [CHAIN]
        return {
            "chain": registry.get_chain(CHAIN, as_of),
            "single": [find(registry, det(d), ts, chain, as_of=as_of) for d, ts in probes],
            "bulk": [
                summary(m)
                for m in registry.find_calibrations_bulk(
                    "bias", chain, [(det(d), ts) for d, ts in probes], as_of=as_of
                )
            ],
            CALIB: contents(registry, CALIB, as_of),
            CALIB_NEW: contents(registry, CALIB_NEW, as_of),
        }

    history: list[tuple[int, dict[str, Any]]] = []

    def step(*actions: Callable[[], object]) -> dict[str, Any]:
        for action in actions:
            action()
        seen = observe()
        history.append((now_ns(), seen))
        return seen

    before = step(lambda: registry.set_chain(CHAIN, [CALIB]))
    assert before["single"] == [None] * 6

    seen = step(lambda: registry.certify(CALIB, list(a.values()), span(0, 60)))
    assert seen["single"] == [
        (a[d].id, span(0, 60), CALIB) if t != 70 else None for d in (0, 1) for t in (5, 40, 70)
    ]

    seen = step(lambda: registry.decertify(CALIB, "bias", span(30, None), [det(0)]))
    assert seen["single"][:3] == [(a[0].id, span(0, 30), CALIB), None, None]

    seen = step(lambda: registry.certify(CALIB, [b0], span(30, None)))
    assert seen["single"][1:3] == [(b0.id, span(30, None), CALIB)] * 2

    seen = step(
        lambda: registry.certify(CALIB_NEW, list(c.values()), span(None, None)),
        lambda: registry.set_chain(CHAIN, [CALIB_NEW], mode="prepend"),
    )
    assert seen["chain"] == [CALIB_NEW, CALIB]
    assert seen["single"] == [
        (c[d].id, span(None, None), CALIB_NEW) for d in (0, 1) for _ in range(3)
    ]

    seen = step(lambda: registry.decertify(CALIB_NEW, "bias", span(None, None)))
    assert seen["single"] == history[3][1]["single"]  # back to what CALIB alone says

    seen = step(
        lambda: registry.certify(CALIB_NEW, list(c.values()), span(None, None)),  # recertify
        lambda: registry.set_chain(CHAIN, [CALIB_NEW]),
    )
    assert seen["single"][2] == (c[0].id, span(None, None), CALIB_NEW)

    # Every earlier answer, exactly, from the final state of the repository.
    for moment, answers in history:
        assert observe(as_of=moment) == answers
    assert observe() == history[-1][1]
    start = history[0][0] - 10**9 * 3600  # long before the chain existed
    assert observe(as_of=start)["single"] == [None] * 6


def test_frozen_collection_refuses_certify_and_decertify(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "bias/run1", detector=0)
    later = add_calib(registry, "bias", "bias/run2", detector=0)
    registry.certify(CALIB, [bias], span(0, 10))
    registry.set_chain(CHAIN, [CALIB])
    registry.freeze_collection(CALIB)
    registry.freeze_collection(CHAIN)

    with pytest.raises(CollectionFrozenError) as info:
        registry.certify(CALIB, [later], span(10, 20))
    assert_user_error(info.value, repr(CALIB), "frozen", "certify")
    with pytest.raises(CollectionFrozenError) as info:
        registry.certify(CALIB, [bias], span(0, 10))  # even a replay
    with pytest.raises(CollectionFrozenError) as info:
        registry.decertify(CALIB, "bias", span(None, None))
    assert_user_error(info.value, repr(CALIB), "decertify")
    with pytest.raises(CollectionFrozenError):
        registry.set_chain(CHAIN, [])

    assert contents(registry) == [("bias", bias.data_id.key, bias.id, span(0, 10))]
    assert find(registry, det(0), instant(5), [CHAIN]) == (bias.id, span(0, 10), CALIB)


# --- bulk lookups -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certified:
    """One certified range, as the test remembers it (the model lookups are checked against)."""

    collection: str
    dataset_type: str
    key: str
    dataset_id: uuid.UUID
    timespan: Timespan


def model_lookup(
    certified: Sequence[Certified],
    search: Sequence[str],
    dataset_type: str,
    key: str,
    when: Timespan,
) -> Found | type[CalibrationAmbiguityError] | None:
    """The spec's answer: first collection with an overlapping range; two there is ambiguous."""
    for collection in search:
        hits = [
            c
            for c in certified
            if (c.collection, c.dataset_type, c.key) == (collection, dataset_type, key)
            and c.timespan.overlaps(when)
        ]
        if len(hits) > 1:
            return CalibrationAmbiguityError
        if hits:
            return (hits[0].dataset_id, hits[0].timespan, collection)
    return None


def certify_tracked(
    registry: Registry,
    certified: list[Certified],
    collection: str,
    refs: Sequence[DatasetRef],
    timespan: Timespan,
) -> None:
    assert registry.certify(collection, refs, timespan) == len(refs)
    certified.extend(
        Certified(collection, r.dataset_type.name, r.data_id.key, r.id, timespan) for r in refs
    )


def test_bulk_agrees_with_single_lookups_for_exposures(registry: Registry) -> None:
    """40 exposures x 4 detectors, biases and flats, through a chain of two collections."""
    registry.register_collection(CALIB_NEW, CollectionType.CALIBRATION)
    registry.set_chain(CHAIN, [CALIB_NEW, CALIB])
    certified: list[Certified] = []
    with registry.transaction():  # one commit for the setup: faster
        for d in range(4):
            # Bias epochs per detector (boundaries at midnight, exposures at noon), with a gap.
            epochs = [(None, 10 + d), (10 + d, 25), (25, 33), (36, None)]
            for i, (begin, end) in enumerate(epochs):
                ref = add_calib(registry, "bias", f"bias/epoch{i}", detector=d)
                certify_tracked(registry, certified, CALIB, [ref], span(begin, end))
            for f in ("dummy_g", "dummy_r"):  # no dummy_i flats at all
                for i, (begin, end) in enumerate([(None, 20), (20, None)]):
                    ref = add_calib(
                        registry, "flat", f"flat/epoch{i}", detector=d, physical_filter=f
                    )
                    certify_tracked(registry, certified, CALIB, [ref], span(begin, end))
        patch = add_calib(registry, "bias", "bias/patch", detector=0)
        certify_tracked(registry, certified, CALIB_NEW, [patch], span(30, 38))

    filters = ["dummy_g", "dummy_r", "dummy_i"]
    with registry.transaction():  # one commit for the setup: faster
        for e in range(40):
            noon = ns_to_iso(day(e + 0.5))
            assert noon is not None
            add_exposure(registry, 1000 + e, noon, physical_filter=filters[e % 3])
    data_ids = [
        {"instrument": INSTRUMENT, "exposure": 1000 + e, "detector": d}
        for e in range(40)
        for d in range(4)
    ]
    queries = registry.with_exposures(data_ids)
    assert len(queries) == 160

    for dataset_type in ("bias", "flat"):
        bulk = [summary(m) for m in registry.find_calibrations_bulk(dataset_type, [CHAIN], queries)]
        single = [find(registry, d, ts, [CHAIN], dataset_type) for d, ts in queries]
        dt = registry.get_dataset_type(dataset_type)
        model = [
            model_lookup(
                certified,
                [CALIB_NEW, CALIB],
                dataset_type,
                registry.universe.data_id(dt.dimensions, d).key,
                ts,
            )
            for d, ts in queries
        ]
        assert bulk == single == model
        found = [m for m in bulk if m is not None]
        assert len({m[0] for m in found}) > 4  # many distinct answers, not one repeated
    # Spot checks that do not rely on the model: the patch wins on detector 0, day 31.
    i = data_ids.index({"instrument": INSTRUMENT, "exposure": 1031, "detector": 0})
    assert summary(registry.find_calibrations_bulk("bias", [CHAIN], [queries[i]])[0]) == (
        patch.id,
        span(30, 38),
        CALIB_NEW,
    )
    # Exposure 1034 (day 34.5) on detector 1 falls into the gap between epochs: nothing.
    i = data_ids.index({"instrument": INSTRUMENT, "exposure": 1034, "detector": 1})
    assert registry.find_calibrations_bulk("bias", [CHAIN], [queries[i]]) == [None]


def bias_key(detector: int) -> str:
    return f"instrument={INSTRUMENT},detector={detector}"


def random_epochs(rng: random.Random, count: int) -> list[Timespan]:
    """``count`` disjoint ranges over a year, some adjacent, some with gaps, ends unbounded."""
    cuts = sorted(rng.sample(range(1, 365 * 24), 2 * count))  # hour boundaries
    out: list[Timespan] = []
    for i in range(count):
        begin = None if i == 0 else day(cuts[2 * i] / 24)
        end_hour = cuts[2 * i + 1] if rng.random() < 0.6 else cuts[min(2 * i + 2, len(cuts) - 1)]
        end = None if i == count - 1 else day(end_hour / 24)
        out.append(Timespan(begin, end))
    return out


def test_bulk_randomized_10000_queries_agree_with_model_and_single(registry: Registry) -> None:
    rng = random.Random(20240501)
    registry.register_collection(CALIB_NEW, CollectionType.CALIBRATION)
    registry.set_chain(CHAIN, [CALIB_NEW, CALIB])
    certified: list[Certified] = []
    with registry.transaction():  # one commit for the setup: faster
        for collection, count in ((CALIB, 12), (CALIB_NEW, 3)):
            for d in range(4):
                epochs = random_epochs(rng, count)
                if collection == CALIB_NEW:  # sparse overrides: drop the unbounded ends
                    epochs = [ts for ts in epochs if ts.begin is not None and ts.end is not None]
                for i, ts in enumerate(epochs):
                    ref = add_calib(registry, "bias", f"{collection}/gen{i}", detector=d)
                    certify_tracked(registry, certified, collection, [ref], ts)

    queries: list[tuple[dict[str, Any], Timespan]] = []
    expected: list[Found | None] = []
    straddling: list[tuple[dict[str, Any], Timespan]] = []
    while len(queries) < 10_000:
        d = rng.randrange(4)
        if rng.random() < 0.2:  # exactly on an hour, where validity ranges begin and end
            begin = day(rng.randrange(-20 * 24, 385 * 24) / 24)
        else:
            begin = day(rng.uniform(-20, 385))
        ts = Timespan(begin, begin + rng.choice([1, 30 * 10**9, 3600 * 10**9]))
        answer = model_lookup(certified, [CALIB_NEW, CALIB], "bias", bias_key(d), ts)
        if answer is CalibrationAmbiguityError:
            straddling.append((det(d), ts))
            continue
        assert not isinstance(answer, type)
        queries.append((det(d), ts))
        expected.append(answer)

    bulk = [summary(m) for m in registry.find_calibrations_bulk("bias", [CHAIN], queries)]
    assert bulk == expected
    assert sum(m is None for m in expected) > 100  # gaps and pre-history are exercised
    assert sum(m is not None and m[2] == CALIB_NEW for m in expected) > 100  # overrides too

    sample = rng.sample(range(len(queries)), 200)  # one at a time is ~5 ms each
    assert [find(registry, *queries[i], [CHAIN]) for i in sample] == [expected[i] for i in sample]

    # One straddling query anywhere in a bulk makes the whole bulk ambiguous.
    assert straddling, "the seed should produce some straddling queries"
    with pytest.raises(CalibrationAmbiguityError) as info:
        registry.find_calibrations_bulk("bias", [CHAIN], [*queries[:50], straddling[0]])
    assert_user_error(info.value, "bias", str(straddling[0][1]))


def test_bulk_edge_cases(registry: Registry) -> None:
    bias = add_calib(registry, "bias", "bias/run1", detector=0)
    after = add_calib(registry, "bias", "bias/run2", detector=0)
    dark = add_calib(registry, "dark", "dark/run1", detector=0)
    registry.certify(CALIB, [bias], span(0, 10))
    registry.certify(CALIB, [after], span(10, 20))
    registry.certify(CALIB, [dark], span(5, 15))
    assert registry.find_calibrations_bulk("bias", [CALIB], []) == []

    # Half-open in bulk too: queries touching a boundary from either side are not ambiguous.
    edges = [
        Timespan(day(10) - 1, day(10)),
        Timespan(day(10), day(10) + 1),
        Timespan(day(0) - 5, day(0)),
        Timespan(day(20), None),
        span(2, 10),
        span(10, 20),
    ]
    found = registry.find_calibrations_bulk("bias", [CALIB], [(det(0), ts) for ts in edges])
    assert [summary(m) for m in found] == [
        (bias.id, span(0, 10), CALIB),
        (after.id, span(10, 20), CALIB),
        None,
        None,
        (bias.id, span(0, 10), CALIB),
        (after.id, span(10, 20), CALIB),
    ]
    assert [find(registry, det(0), ts) for ts in edges] == [summary(m) for m in found]
    # Another dataset type over the same data ID and times is not seen (nor ambiguous).
    darks = registry.find_calibrations_bulk("dark", [CALIB], [(det(0), ts) for ts in edges[:2]])
    assert [summary(m) for m in darks] == [(dark.id, span(5, 15), CALIB)] * 2
    # The same query twice, and a data ID given with extra keys.
    twice = registry.find_calibrations_bulk(
        "bias", [CALIB], [(det(0), instant(1)), (det(0, exposure=5), instant(1))]
    )
    assert [summary(m) for m in twice] == [(bias.id, span(0, 10), CALIB)] * 2

    registry.set_chain("with-a-run", [CALIB, "bias/run1"])
    with pytest.raises(CollectionTypeError) as info:
        registry.find_calibrations_bulk("bias", ["with-a-run"], [(det(0), instant(1))])
    assert_user_error(info.value, "bias/run1", "CALIBRATION")


# --- concurrency --------------------------------------------------------------------------------


def open_again(butler: Butler, actor: str) -> Registry:
    """Another Registry on the same database (a second process, as far as the database knows)."""
    return Registry.open(butler.config.db_url(butler.root), butler.config.namespace(), actor)


def race(calls: Sequence[Callable[[], int]]) -> list[int | BaseException]:
    """Run the calls in threads released together by a barrier; their results or errors."""
    barrier = threading.Barrier(len(calls))
    results: list[int | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = calls[i]()
        except BaseException as err:  # reported to the test
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_overlapping_certify_exactly_one_wins(butler: Butler) -> None:
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    registry.register_collection(CALIB, CollectionType.CALIBRATION)
    writers = [open_again(butler, f"writer{i}") for i in range(2)]
    try:
        for attempt in range(4):
            d = attempt % 4
            refs = [add_calib(registry, "bias", f"race/{attempt}/{w}", detector=d) for w in (0, 1)]
            ranges = [span(0, 20), span(10, 30)]
            results = race(
                [functools.partial(writers[w].certify, CALIB, [refs[w]], ranges[w]) for w in (0, 1)]
            )
            assert sorted(type(r).__name__ for r in results) == ["CalibrationOverlapError", "int"]
            winner = next(w for w in (0, 1) if results[w] == 1)
            loser_error = results[1 - winner]
            assert isinstance(loser_error, CalibrationOverlapError)
            assert_user_error(loser_error, "bias", CALIB, str(ranges[winner]), str(refs[winner].id))
            live = [row for row in contents(registry) if row[1] == refs[0].data_id.key]
            assert live == [("bias", refs[0].data_id.key, refs[winner].id, ranges[winner])]
            registry.decertify(CALIB, "bias", Timespan(None, None), [det(d)])
    finally:
        for writer in writers:
            writer.close()


def test_concurrent_identical_replays_both_succeed(butler: Butler) -> None:
    """Two writers retrying the same certification at once: a replay is a no-op, not an error."""
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    registry.register_collection(CALIB, CollectionType.CALIBRATION)
    writers = [open_again(butler, f"writer{i}") for i in range(2)]
    try:
        for attempt in range(4):
            ref = add_calib(registry, "bias", f"replay/{attempt}", detector=attempt)
            results = race(
                [functools.partial(w.certify, CALIB, [ref], span(0, 20)) for w in writers]
            )
            assert results in ([0, 1], [1, 0]), results
            live = [row for row in contents(registry) if row[1] == ref.data_id.key]
            assert live == [("bias", ref.data_id.key, ref.id, span(0, 20))]
    finally:
        for writer in writers:
            writer.close()


def test_concurrent_creation_of_one_collection(butler: Butler) -> None:
    """Two writers registering the same new collection at once both find it created."""
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    writers = [open_again(butler, f"writer{i}") for i in range(2)]

    def register_and_certify(writer: Registry, name: str, ref: DatasetRef) -> int:
        writer.register_collection(name, CollectionType.CALIBRATION)
        return writer.certify(name, [ref], span(0, 20))

    try:
        for attempt in range(4):
            refs = [add_calib(registry, "bias", f"new/{attempt}", detector=d) for d in (0, 1)]
            name = f"DummyCam/calib/fresh{attempt}"
            results = race(
                [functools.partial(register_and_certify, writers[i], name, refs[i]) for i in (0, 1)]
            )
            assert results == [1, 1], results
    finally:
        for writer in writers:
            writer.close()


def test_concurrent_decertify_of_one_range_cuts_both_windows(butler: Butler) -> None:
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    registry.register_collection(CALIB, CollectionType.CALIBRATION)
    writers = [open_again(butler, f"writer{i}") for i in range(2)]
    windows = [span(10, 20), span(30, 40)]
    try:
        for attempt in range(4):
            ref = add_calib(registry, "bias", f"cut/{attempt}", detector=attempt)
            registry.certify(CALIB, [ref], span(0, 60))
            results = race(
                [
                    functools.partial(w.decertify, CALIB, "bias", cut, [det(attempt)])
                    for w, cut in zip(writers, windows, strict=True)
                ]
            )
            assert results == [1, 1], results
            live = [row[3] for row in contents(registry) if row[1] == ref.data_id.key]
            assert live == [span(0, 10), span(20, 30), span(40, 60)]
    finally:
        for writer in writers:
            writer.close()
