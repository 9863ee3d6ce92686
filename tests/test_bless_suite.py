"""Blessing suites through the calibration and registry handlers on the in-memory bus.

Every test runs on SQLite and PostgreSQL. The broker versions are in test_calib_kafka.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from services.bus.topics import BLESSING_REQUESTS, CALIB_OUTCOMES, REGISTRY_COMMANDS
from services.butler import Butler
from services.calib.suite import Suite, check_suite, load_suite
from services.clients.blessing import single_suite
from services.core.errors import InputError, UndecodableMessageError
from services.core.timespan import Timespan
from services.instruments import load_instrument
from services.messages import RegistryCommand, codec
from services.registry.datasets import DatasetType
from services.registry.dump import canonical_dump
from services.registry.suites import CertifyItem, CertifySuite, ValidityAdjustment
from tests.support.bus import Pipeline, decoded, memory_bus

TARGET = "SimCam/calib/suite"
T = "2024-12-01T00:00:00"
RUNS = {
    "bias": "SimCam/calib/bias",
    "dark": "SimCam/calib/dark",
    "flat": "SimCam/calib/flat-old",
}
NEW_FLATS = "SimCam/calib/flat-new"


@pytest.fixture
def repo(empty_butler: Butler) -> Butler:
    """SimCam with bias, dark and flat masters for detectors 0 and 1 (and newer flats)."""
    load_instrument("SimCam").register(empty_butler.registry)
    empty_butler.registry.register_dataset_type(
        DatasetType("note", ("instrument", "detector"), "Json")
    )
    for name in RUNS:
        empty_butler.registry.register_dataset_type(
            DatasetType(name, ("instrument", "detector"), "Json", True)
        )
    for det in (0, 1):
        data_id = {"instrument": "SimCam", "detector": det}
        for name, run in RUNS.items():
            empty_butler.put({"kind": name, "det": det}, name, data_id, run)
        empty_butler.put({"kind": "flat", "new": True}, "flat", data_id, NEW_FLATS)
        empty_butler.put({"kind": "note"}, "note", data_id, "SimCam/notes")
    return empty_butler


def suite(*calibrations: dict[str, Any], adjustments: Any = (), collection: str = TARGET) -> Suite:
    return Suite.model_validate(
        {
            "collection": collection,
            "reason": "pytest",
            "requested_by": "pytest",
            "calibrations": list(calibrations),
            "adjustments": list(adjustments),
        }
    )


def item(name: str, begin: str | None = "2024-11-01", end: str | None = None, **kw: Any) -> Any:
    run = RUNS.get(name, "SimCam/calib/bias")
    return {"dataset_type": name, "run": run, "begin": begin, "end": end, **kw}


def end_flat(det: int, at: str = T) -> dict[str, Any]:
    return {
        "dataset_type": "flat",
        "data_id": {"instrument": "SimCam", "detector": det},
        "action": "end",
        "end": at,
    }


def bless(repo: Butler, tmp_path: Path, *suites: Suite) -> list[dict[str, Any]]:
    """Send the suites one after the other; their CalibrationOutcomes, in order."""
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    ids = []
    for s in suites:
        request_id = str(uuid.uuid4())
        ids.append(request_id)
        bus.send(
            BLESSING_REQUESTS.name,
            s.collection.encode(),
            s.request(request_id).encode(),
        )
        pipeline.drain()
    outcomes = {o["request_id"]: o for o in decoded(bus, CALIB_OUTCOMES.name)}
    assert len(outcomes) == len(decoded(bus, CALIB_OUTCOMES.name)), "one outcome per request"
    return [outcomes[i] for i in ids]


def found_run(repo: Butler, name: str, det: int, when: str, collection: str = TARGET) -> Any:
    match = repo.registry.find_calibration(
        name, {"instrument": "SimCam", "detector": det}, [collection], Timespan.at(when)
    )
    return None if match is None else match.ref.run


def test_a_suite_of_three_types_is_blessed_in_one_request(repo: Butler, tmp_path: Path) -> None:
    (outcome,) = bless(repo, tmp_path, suite(item("bias"), item("dark"), item("flat")))
    assert (outcome["status"], outcome["certified"]) == ("blessed", 6), outcome
    for name, run in RUNS.items():
        for det in (0, 1):
            assert found_run(repo, name, det, "2025-01-01") == run
            assert found_run(repo, name, det, "2024-10-31") is None


def test_end_the_old_flat_and_start_the_new_one_at_t(repo: Butler, tmp_path: Path) -> None:
    new_flat = {**item("flat", begin=T), "run": NEW_FLATS}
    change = suite(new_flat, adjustments=[end_flat(0), end_flat(1)])
    first, second, repeat = bless(repo, tmp_path, suite(item("flat")), change, change)
    assert first["status"] == "blessed" and first["certified"] == 2
    assert (second["status"], second["certified"]) == ("blessed", 2), second
    assert (repeat["status"], repeat["certified"]) == ("blessed", 0), repeat  # a no-op
    for det in (0, 1):
        assert found_run(repo, "flat", det, "2024-11-30T23:59:59") == RUNS["flat"]
        assert found_run(repo, "flat", det, T) == NEW_FLATS
        assert found_run(repo, "flat", det, "2026-01-01") == NEW_FLATS
    ranges = sorted(str(ts) for _, ts in repo.registry.query_calibrations(TARGET, "flat"))
    assert ranges == [
        "[2024-11-01T00:00:00, 2024-12-01T00:00:00)",
        "[2024-11-01T00:00:00, 2024-12-01T00:00:00)",
        "[2024-12-01T00:00:00, +inf)",
        "[2024-12-01T00:00:00, +inf)",
    ]


def test_a_decertify_adjustment_cuts_a_window(repo: Butler, tmp_path: Path) -> None:
    cut = {
        "dataset_type": "bias",
        "data_id": {"instrument": "SimCam", "detector": 1},
        "action": "decertify",
        "begin": "2024-11-10",
        "end": "2024-11-12",
    }
    first, second = bless(
        repo, tmp_path, suite(item("bias")), suite(item("dark"), adjustments=[cut])
    )
    assert first["status"] == "blessed", first
    assert second["status"] == "blessed", second
    assert found_run(repo, "bias", 1, "2024-11-11") is None
    assert found_run(repo, "bias", 1, "2024-11-12") == RUNS["bias"]
    assert found_run(repo, "bias", 0, "2024-11-11") == RUNS["bias"]


def _refusal(repo: Butler, tmp_path: Path, refused: Suite) -> dict[str, Any]:
    """Bless the old flats, then ``refused``: its outcome; the registry must not change."""
    (first,) = bless(repo, tmp_path / "a", suite(item("flat")))
    assert first["status"] == "blessed"
    before = canonical_dump(repo.registry)
    (outcome,) = bless(repo, tmp_path / "b", refused)
    assert canonical_dump(repo.registry) == before, "a refused suite changed the registry"
    assert outcome["status"] == "rejected" and outcome["certified"] == 0
    assert "\n" not in outcome["message"]
    return outcome


def test_a_conflict_anywhere_applies_nothing(repo: Butler, tmp_path: Path) -> None:
    # The bias and dark are fine; the new flat overlaps the certified old one (no adjustment).
    new_flat = {**item("flat", begin=T), "run": NEW_FLATS}
    outcome = _refusal(repo, tmp_path, suite(item("bias"), item("dark"), new_flat))
    assert outcome["reason"] == "validity_overlap"
    assert "[2024-11-01T00:00:00, +inf) (certified" in outcome["message"]
    assert "instrument=SimCam,detector=0" in outcome["message"]


def test_two_items_of_one_suite_may_not_overlap(repo: Butler, tmp_path: Path) -> None:
    new_flat = {**item("flat", begin=T), "run": NEW_FLATS}
    (outcome,) = bless(repo, tmp_path, suite(item("flat"), new_flat))
    assert (outcome["status"], outcome["reason"]) == ("rejected", "validity_overlap")
    assert "item 2 of the suite" in outcome["message"]
    assert "item 1 of the suite" in outcome["message"]
    assert repo.registry.query_collections() == [
        c for c in repo.registry.query_collections() if c.name != TARGET
    ], "the target collection must not have been created"


@pytest.mark.parametrize(
    ("calibrations", "adjustments", "reason", "words"),
    [
        ([item("bias"), item("nosuch")], [], "unknown_dataset_type", "nosuch"),
        ([item("bias"), {**item("note"), "run": "SimCam/notes"}], [], "not_a_calibration", "note"),
        (
            [item("bias", data_ids=[{"instrument": "SimCam", "detector": 999}])],
            [],
            "bad_data_id",
            "detector=999",
        ),
        (
            [item("bias", data_ids=[{"instrument": "SimCam", "detector": 5}])],
            [],
            "dataset_not_found",
            "detector=5",
        ),
        ([item("bias")], [end_flat(0, "2024-10-01")], "adjustment_mismatch", "end flat"),
        ([{**item("bias"), "run": "nowhere"}], [], "unknown_collection", "nowhere"),
    ],
)
def test_refusals_say_why_and_change_nothing(
    repo: Butler,
    tmp_path: Path,
    calibrations: list[dict[str, Any]],
    adjustments: list[dict[str, Any]],
    reason: str,
    words: str,
) -> None:
    outcome = _refusal(repo, tmp_path, suite(*calibrations, adjustments=adjustments))
    assert outcome["reason"] == reason, outcome
    assert words in outcome["message"], outcome


def test_the_registry_refuses_a_suite_that_no_longer_fits(repo: Butler, tmp_path: Path) -> None:
    """Checked by the calib service, then overtaken: the registry applies all or nothing."""
    (first,) = bless(repo, tmp_path / "a", suite(item("flat")))
    assert first["status"] == "blessed", first
    new_flat = {**item("flat", begin=T), "run": NEW_FLATS}
    command = check_suite(
        repo.registry, suite(item("dark"), new_flat, adjustments=[end_flat(0), end_flat(1)]), "r1"
    )
    # Meanwhile someone certifies a dark from 2024-11-20 on: the suite's dark now overlaps.
    darks = [r for r, _ in repo.registry.query_datasets("dark", [RUNS["dark"]])]
    repo.registry.certify(TARGET, darks, Timespan.from_times("2024-11-20", None))
    before = canonical_dump(repo.registry)
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    sent = RegistryCommand.new(command, "pytest", command_id="r1")
    bus.send(REGISTRY_COMMANDS.name, TARGET.encode(), sent.encode())
    pipeline.drain()
    (outcome,) = decoded(bus, CALIB_OUTCOMES.name)
    assert (outcome["status"], outcome["reason"]) == ("rejected", "validity_overlap"), outcome
    assert canonical_dump(repo.registry) == before  # the flat adjustments were rolled back


def test_a_single_bless_honours_its_adjustments(repo: Butler, tmp_path: Path) -> None:
    bless(repo, tmp_path / "a", suite(item("flat")))
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    request = {  # a v1-shaped request, as `obsbus bless` sent before suites existed
        "request_id": "single",
        "collection": TARGET,
        "dataset_type": "flat",
        "run": NEW_FLATS,
        "data_ids": [{"instrument": "SimCam", "detector": 0}],
        "begin_ns": Timespan.from_times(T, None).begin,
        "end_ns": None,
        "requested_by": "pytest",
        "reason": "new flat",
        "adjustments": [
            {
                "dataset_type": "flat",
                "data_id": {"instrument": "SimCam", "detector": 0},
                "begin_ns": None,
                "end_ns": Timespan.from_times(T, None).begin,
                "action": "end",
            }
        ],
        "requested_at_ns": 0,
    }
    v1 = codec.default_registry().get(BLESSING_REQUESTS.record, 1)
    bus.send(BLESSING_REQUESTS.name, b"c", codec.default_registry().encode_with(v1, request))
    pipeline.drain()
    (outcome,) = decoded(bus, CALIB_OUTCOMES.name)
    assert (outcome["status"], outcome["certified"]) == ("blessed", 1), outcome
    assert found_run(repo, "flat", 0, "2024-11-30") == RUNS["flat"]
    assert found_run(repo, "flat", 0, "2024-12-02") == NEW_FLATS
    assert found_run(repo, "flat", 1, "2024-12-02") == RUNS["flat"]


def test_one_dataset_into_two_collections_with_different_ranges(
    repo: Butler, tmp_path: Path
) -> None:
    a = single_suite("SimCam/calib/A", "bias", RUNS["bias"], end_ns=_ns("2025-01-01"))
    b = single_suite("SimCam/calib/B", "bias", RUNS["bias"], begin_ns=_ns("2025-01-01"))
    outcomes = bless(repo, tmp_path, a, b)
    assert [o["status"] for o in outcomes] == ["blessed", "blessed"], outcomes
    assert found_run(repo, "bias", 0, "2024-06-01", "SimCam/calib/A") == RUNS["bias"]
    assert found_run(repo, "bias", 0, "2025-06-01", "SimCam/calib/A") is None
    assert found_run(repo, "bias", 0, "2024-06-01", "SimCam/calib/B") is None
    assert found_run(repo, "bias", 0, "2025-06-01", "SimCam/calib/B") == RUNS["bias"]


def _ns(when: str) -> int:
    ns = Timespan.at(when).begin
    assert ns is not None
    return ns


# --- the command on the wire and the suite file -------------------------------------------------


def test_a_suite_command_round_trips_through_avro() -> None:
    command = CertifySuite(
        TARGET,
        (
            CertifyItem((str(uuid.uuid4()),), Timespan(None, _ns(T))),
            CertifyItem((str(uuid.uuid4()), str(uuid.uuid4())), Timespan(_ns(T), None)),
        ),
        (ValidityAdjustment("flat", {"instrument": "SimCam", "detector": 3}, "end", None, 5),),
        "req-1",
    )
    data = RegistryCommand.new(command, "pytest").encode()
    assert RegistryCommand.decode(data).body == command
    # A registry service too old to know suites cannot read one: it dead-letters it rather
    # than certify its first item alone.
    for old in ("RegistryCommand.v1", "RegistryCommand.v2"):
        with pytest.raises(UndecodableMessageError):
            codec.decode(data, reader=old)
    # A suite written by v2 (in the Certify branch) still reads back whole.
    v2 = {
        "collection": TARGET,
        "dataset_ids": list(command.items[0].dataset_ids),
        "begin_ns": None,
        "end_ns": _ns(T),
        "request_id": "req-1",
        "adjustments": [  # a v2 ValidityAdjustment, as written then
            {
                "dataset_type": "flat",
                "data_id": {"instrument": "SimCam", "detector": 3},
                "action": "end",
                "begin_ns": None,
                "end_ns": 5,
            }
        ],
        "further": [
            {"dataset_ids": list(command.items[1].dataset_ids), "begin_ns": _ns(T), "end_ns": None}
        ],
    }
    value = {**RegistryCommand.new(command, "pytest").to_value(), "body": ("obsbus.Certify", v2)}
    registry = codec.default_registry()
    old_data = registry.encode_with(registry.get("RegistryCommand", 2), value)
    assert RegistryCommand.decode(old_data).body == command


def test_the_example_suite_file_is_valid() -> None:
    loaded = load_suite(Path(__file__).resolve().parent.parent / "examples" / "suite.yaml")
    assert [c.dataset_type for c in loaded.calibrations] == ["dark", "flat"]
    assert loaded.adjustments[0].action == "end" and loaded.adjustments[0].end == _ns(T)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("collection: C\n", "calibrations: Field required"),
        ("collection: C\ncalibrations: []\n", "calibrations: List should have at least 1 item"),
        (
            "collection: C\ncalibrations:\n- {dataset_type: bias, run: r, begin: someday}\n",
            "calibrations.0.begin: cannot read 'someday' as a time",
        ),
        (
            "collection: C\ncalibrations:\n- {dataset_type: bias, run: r, colour: red}\n",
            "calibrations.0.colour: Extra inputs are not permitted",
        ),
        (
            "collection: C\ncalibrations:\n- {dataset_type: bias, run: r, begin: 2025-01-01,"
            " end: 2024-01-01}\n",
            "calibrations.0: empty timespan",
        ),
        (
            "collection: C\ncalibrations:\n- {dataset_type: bias, run: r}\nadjustments:\n"
            "- {dataset_type: flat, data_id: {detector: 1}, action: end}\n",
            "adjustments.0: adjustment 'end' of flat {'detector': 1} needs an end time",
        ),
        (
            "collection: C\ncalibrations:\n- {dataset_type: bias, run: r}\nadjustments:\n"
            "- {dataset_type: flat, data_id: {detector: 1}, action: shorten, end: 2025-01-01}\n",
            "adjustments.0.action: Input should be 'end' or 'decertify'",
        ),
        ("collection: [C\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_a_bad_suite_file_is_one_line_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "\n" not in message
