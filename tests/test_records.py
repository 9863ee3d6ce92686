"""Dimension records: insert, sync, explicit update with audit, queries, installations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.butler import Butler
from services.core.errors import (
    DataIdError,
    DimensionRecordError,
    ExpressionError,
    ObsbusError,
    RecordConflictError,
    RecordExistsError,
    RecordNotFoundError,
    UnknownDimensionError,
)
from services.core.timespan import (
    BEGIN_UNBOUNDED,
    END_UNBOUNDED,
    Timespan,
    parse_time,
    time_to_ns,
)
from tests.support.dummycam import DummyCam
from tests.support.records import add_exposure


def test_insert_then_insert_again_fails_and_writes_nothing(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    registry.insert_dimension_records("instrument", [{"name": "A"}])
    with pytest.raises(RecordExistsError, match="instrument record name='A' already exists"):
        registry.insert_dimension_records("instrument", [{"name": "B"}, {"name": "A"}])
    names = [r["name"] for r in registry.query_dimension_records("instrument")]
    assert names == ["A"]  # B was not written either: the call is all or nothing


def test_sync_identical_is_unchanged(butler: Butler) -> None:
    registry = butler.registry
    record = {"instrument": "DummyCam", "name": "dummy_z", "band": "z"}
    registry.sync_dimension_record("band", {"name": "z"})
    assert registry.sync_dimension_record("physical_filter", record) == "inserted"
    assert registry.sync_dimension_record("physical_filter", record) == "unchanged"


def test_sync_conflict_names_every_differing_field(butler: Butler) -> None:
    registry = butler.registry
    before = registry.fetch_dimension_record("detector", {"instrument": "DummyCam", "id": 3})
    changed = {"instrument": "DummyCam", "id": 3, "full_name": "X03", "purpose": "science"}
    with pytest.raises(RecordConflictError) as info:
        registry.sync_dimension_records("detector", [changed])
    message = str(info.value)
    assert "detector record instrument='DummyCam', id=3" in message
    assert "full_name: 'D03' -> 'X03'" in message
    assert "purpose: 'guider' -> 'science'" in message
    assert "nothing was written" in message and "\n" not in message
    assert info.value.diffs == {"full_name": ("D03", "X03"), "purpose": ("guider", "science")}
    after = registry.fetch_dimension_record("detector", {"instrument": "DummyCam", "id": 3})
    assert after == before


def test_sync_batch_with_one_conflict_writes_nothing(butler: Butler) -> None:
    registry = butler.registry
    registry.sync_dimension_record("band", {"name": "z"})
    batch = [
        {"instrument": "DummyCam", "name": "new_filter", "band": "z"},
        {"instrument": "DummyCam", "name": "dummy_g", "band": "z"},  # registered with band g
    ]
    with pytest.raises(RecordConflictError, match="band: 'g' -> 'z'"):
        registry.sync_dimension_records("physical_filter", batch)
    filters = {r["name"] for r in registry.query_dimension_records("physical_filter")}
    assert "new_filter" not in filters


def test_update_needs_reason_and_is_audited(butler: Butler) -> None:
    registry = butler.registry
    record = {"instrument": "DummyCam", "id": 3, "full_name": "D03", "purpose": "wavefront"}
    with pytest.raises(DimensionRecordError, match="needs a reason"):
        registry.update_dimension_record("detector", record, reason=" ")
    diffs = registry.update_dimension_record(
        "detector", record, reason="slot 3 was re-purposed (ticket OPS-12)"
    )
    assert diffs == {"purpose": ("guider", "wavefront")}
    stored = registry.fetch_dimension_record("detector", {"instrument": "DummyCam", "id": 3})
    assert stored is not None and stored["purpose"] == "wavefront"
    (audit,) = registry.record_audit("detector")
    assert audit["field"] == "purpose"
    assert audit["old_value"] == '"guider"' and audit["new_value"] == '"wavefront"'
    assert audit["reason"] == "slot 3 was re-purposed (ticket OPS-12)"
    assert audit["changed_by"] == "pytest"
    # An update that changes nothing leaves no audit row.
    assert registry.update_dimension_record("detector", record, reason="again") == {}
    assert len(registry.record_audit("detector")) == 1


def test_update_of_missing_record(butler: Butler) -> None:
    with pytest.raises(RecordNotFoundError, match="no detector record"):
        butler.registry.update_dimension_record(
            "detector", {"instrument": "DummyCam", "id": 99}, reason="r"
        )


@pytest.mark.parametrize(
    ("element", "record", "error", "text"),
    [
        ("detector", {"instrument": "DummyCam", "id": "x"}, DataIdError, "must be an integer"),
        ("detector", {"instrument": "DummyCam"}, DimensionRecordError, "lacks its key field 'id'"),
        (
            "detector",
            {"instrument": "DummyCam", "id": 9, "colour": 1},
            DimensionRecordError,
            "unknown fields ['colour']",
        ),
        ("nonsense", {"name": "x"}, UnknownDimensionError, "no dimension element 'nonsense'"),
    ],
)
def test_malformed_records_are_refused(
    butler: Butler, element: str, record: dict[str, object], error: type[ObsbusError], text: str
) -> None:
    with pytest.raises(error) as info:
        butler.registry.sync_dimension_record(element, record)
    assert text in str(info.value)


def test_record_referring_to_unknown_dimension_value_is_a_clear_error(butler: Butler) -> None:
    # The database's foreign key refuses it; the user sees an obsbus error, not SQLAlchemy's.
    with pytest.raises(ObsbusError) as info:
        butler.registry.sync_dimension_record(
            "physical_filter", {"instrument": "NoSuchCam", "name": "f", "band": "g"}
        )
    assert "sqlalchemy" not in type(info.value).__module__


def test_query_records_with_where(butler: Butler) -> None:
    registry = butler.registry
    add_exposure(registry, 10, "2024-03-01T01:00:00", physical_filter="dummy_g")
    add_exposure(registry, 11, "2024-03-01T01:01:00", seconds=15)
    add_exposure(registry, 12, "2024-03-02T01:00:00", observation_type="bias", seconds=0.5)
    ids = [r["id"] for r in registry.query_dimension_records("exposure", "exposure_time > 10")]
    assert ids == [10, 11]
    found = registry.query_dimension_records(
        "exposure", "exposure.observation_type = 'bias' OR physical_filter = 'dummy_g'"
    )
    assert [r["id"] for r in found] == [10, 12]
    assert [r["id"] for r in registry.query_dimension_records("exposure", "exposure = 11")] == [11]
    with pytest.raises(ExpressionError, match="exposure has no field 'colour'"):
        registry.query_dimension_records("exposure", "colour = 'red'")
    record = registry.fetch_dimension_record("exposure", {"instrument": "DummyCam", "id": 11})
    assert record is not None
    assert record["timespan"] == Timespan.from_times("2024-03-01T01:01:00", "2024-03-01T01:01:15")


def test_register_instrument_is_idempotent_and_conflicts_on_change(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    first = DummyCam.register(registry)
    assert first["detector"] == 4 and first["physical_filter"] == 3
    assert sum(DummyCam.register(registry).values()) == 0

    class ChangedCam(DummyCam):
        """A new release of DummyCam's definition where detector 3 changed purpose."""

        detectors = (
            *DummyCam.detectors[:3],
            replace(DummyCam.detectors[3], purpose="wavefront"),
        )

        @classmethod
        def class_path(cls) -> str:
            return DummyCam.class_path()

    with pytest.raises(RecordConflictError, match="purpose: 'guider' -> 'wavefront'"):
        ChangedCam.register(registry)
    ChangedCam.register(registry, update=True, reason="detector 3 is a wavefront sensor")
    stored = registry.fetch_dimension_record("detector", {"instrument": "DummyCam", "id": 3})
    assert stored is not None and stored["purpose"] == "wavefront"


def test_sensor_swap_is_recorded_and_visible_per_time(butler: Butler) -> None:
    registry = butler.registry
    swap = time_to_ns(parse_time("2024-06-01T00:00:00"))
    before, after = swap - 1, swap + 1
    assert registry.installed_detector("DummyCam", 1, before) == "SN-1001"
    assert registry.record_installation("DummyCam", 1, "SN-2001", swap) == "swapped"
    assert registry.record_installation("DummyCam", 1, "SN-2001", swap) == "unchanged"
    assert registry.installed_detector("DummyCam", 1, before) == "SN-1001"
    assert registry.installed_detector("DummyCam", 1, after) == "SN-2001"
    assert registry.installed_detector("DummyCam", 1, BEGIN_UNBOUNDED) == "SN-1001"
    device = registry.fetch_dimension_record(
        "physical_detector", {"instrument": "DummyCam", "serial": "SN-2001"}
    )
    assert device is not None and device["purpose"] == "science"
    # Re-registering the instrument does not undo the swap.
    assert sum(DummyCam.register(registry).values()) == 0
    assert registry.installed_detector("DummyCam", 1, after) == "SN-2001"


def installations(registry: Any) -> list[tuple[str, int, int]]:
    rows = registry.query_dimension_records("detector_installation")
    return sorted(
        (r["physical_detector"], r["timespan"].db_begin, r["timespan"].db_end)
        for r in rows
        if r["instrument"] == "DummyCam" and r["detector"] == 1
    )


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_a_swap_seen_out_of_order_gives_the_same_history(
    butler: Butler, order: tuple[int, ...]
) -> None:
    # Three exposures after a swap, applied in any order (a replay reads partitions in its own
    # order): one row per device's stay in the slot, starting at the earliest exposure.
    registry = butler.registry
    times = [time_to_ns(parse_time(f"2024-06-0{d}T00:00:00")) for d in (1, 2, 3)]
    outcomes = [registry.record_installation("DummyCam", 1, "SN-2001", times[i]) for i in order]
    assert outcomes[0] == "swapped" and outcomes.count("swapped") == 1  # one swap, one report
    assert installations(registry) == [
        ("SN-1001", BEGIN_UNBOUNDED, times[0]),
        ("SN-2001", times[0], END_UNBOUNDED),
    ]
