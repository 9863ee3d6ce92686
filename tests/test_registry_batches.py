"""The registry service applies a stream of small batches as it would apply one large batch.

It remembers from one batch to the next which dimension records the database holds (an
exposure's files arrive in many small batches and carry the same records), so a later batch
neither syncs them again nor looks up the data IDs it knows. That memory must never make the
registry accept what it would refuse: it is forgotten when a batch or a rejected command is
rolled back and when a record may have changed. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from structlog.testing import capture_logs

from services.bus.runner import Incoming, Outgoing
from services.bus.topics import INGEST_OUTCOMES, REGISTRY_COMMANDS
from services.bus.transport import Delivery
from services.butler import Butler
from services.core.errors import DatabaseUnavailableError
from services.handlers.ingest import IngestHandler
from services.handlers.registry import RegistryHandler
from services.instruments.simcam import SimCam, write_exposure
from services.instruments.simcam.instrument import DETECTORS
from services.messages import RegistryCommand, codec
from services.registry import generation
from services.registry.collections import CollectionType
from services.registry.commands import SetChain
from services.registry.dump import canonical_dump
from services.registry.known import KnownRecords
from services.registry.registry import Registry
from tests.support.bus import raw_arrival

NIGHT = "2024-11-26T01:{:02d}:00"
SLOT = 1
NEW_SERIAL = "ITL-3800C-999"  # the same length as the old one: the header keeps its size

_OFFSETS = itertools.count()


@pytest.fixture
def repo(empty_butler: Butler) -> Butler:
    SimCam.register(empty_butler.registry)
    return empty_butler


@pytest.fixture
def reference(tmp_path: Path, db_settings: dict[str, str | None]) -> Iterator[Butler]:
    """A second repository, where the same commands are applied in one batch."""
    settings = dict(db_settings)
    if settings["db"] is not None:
        settings["db_namespace"] = f"{settings['db_namespace']}_ref"
    butler = Butler.create(tmp_path / "reference", actor="pytest", **settings)
    SimCam.register(butler.registry)
    yield butler
    butler.close()
    if settings["db"] is not None:
        engine = sqlalchemy.create_engine(settings["db"])
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{settings["db_namespace"]}" CASCADE')
        engine.dispose()


def exposure_files(
    tmp_path: Path, seq: int, detectors: Sequence[int], serial: str | None = None
) -> list[Path]:
    """One SimCam exposure's raws; with ``serial``, slot SLOT holds that device instead."""
    files = write_exposure(tmp_path / "landing", seq, NIGHT.format(seq), detectors=detectors)
    if serial is not None:
        path = files[list(detectors).index(SLOT)]
        old = DETECTORS[SLOT].serial
        path.write_bytes(path.read_bytes().replace(f"'{old}'".encode(), f"'{serial}'".encode()))
    return files


def commands(repo: Butler, files: Sequence[Path]) -> list[dict[str, Any]]:
    """The IngestRaw command the ingest service sends for each file."""
    ingest = IngestHandler(repo)
    out = []
    with repo.datastore.transaction(batch_sync=True) as txn:
        for path in files:
            sent = ingest.handle(raw_arrival(path, size=1), txn)
            assert sent.topic == REGISTRY_COMMANDS.name, sent.message
            out.append(sent.message.to_value())  # a value, for tests that forge commands
    return out


def incoming(value: dict[str, Any]) -> Incoming:
    """A command as the service loop hands it over: encoded, decoded, at a new offset."""
    data = codec.encode(REGISTRY_COMMANDS.record, value)
    delivery = Delivery(REGISTRY_COMMANDS.name, 0, next(_OFFSETS), b"k", data, 0)
    return Incoming(delivery, RegistryCommand.decode(data))


def apply(handler: RegistryHandler, values: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return outcomes(handler([incoming(v) for v in values]))


def outcomes(out: Sequence[Outgoing]) -> list[dict[str, Any]]:
    return [o.message.to_value() for o in out if o.topic == INGEST_OUTCOMES.name]


def results(values: Sequence[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(o["status"], o["reason"]) for o in values]


def forged(value: dict[str, Any]) -> dict[str, Any]:
    """A copy of a command, as another command (its own id)."""
    out = copy.deepcopy(value)
    out["command_id"] = str(uuid.uuid4())
    return out


def record_values(value: dict[str, Any], element: str) -> dict[str, Any]:
    (record,) = [r for r in value["body"][1]["records"] if r["element"] == element]
    return dict(record["values"])


def set_record_field(value: dict[str, Any], element: str, field: str, new: Any) -> None:
    for r in value["body"][1]["records"]:
        if r["element"] == element:
            r["values"][field] = new


def count_syncs(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = registry.sync_dimension_records

    def counting(element: str, records: Sequence[dict[str, Any]]) -> Any:
        calls[0] += len(records)
        return real(element, records)

    monkeypatch.setattr(registry, "sync_dimension_records", counting)
    return calls


def test_small_batches_build_the_registry_one_batch_builds(
    repo: Butler, reference: Butler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = commands(repo, exposure_files(tmp_path, 1, range(6)))
    swapped = commands(repo, exposure_files(tmp_path, 2, range(6), NEW_SERIAL))
    third = commands(repo, exposure_files(tmp_path, 3, range(6), NEW_SERIAL))
    # Exposures interleaved, the swap's exposure in the middle: batches of 4 cut across them.
    values = first[:3] + third[:3] + swapped + first[3:] + third[3:]
    small = RegistryHandler(repo.registry, "small")
    syncs_small = count_syncs(repo.registry, monkeypatch)
    got = [o for i in range(0, len(values), 4) for o in apply(small, values[i : i + 4])]
    one = RegistryHandler(reference.registry, "one")
    syncs_one = count_syncs(reference.registry, monkeypatch)
    expected = apply(one, values)
    assert results(got) == results(expected) == [("ingested", None)] * len(values)
    assert [o["swaps"] for o in got] == [o["swaps"] for o in expected]
    assert sum(len(o["swaps"]) for o in got) == 1  # slot 1's new device, found once
    assert canonical_dump(repo.registry) == canonical_dump(reference.registry)
    # Each record was synced once, as in the single batch, not again in every batch.
    assert syncs_small[0] == syncs_one[0]


def test_remembering_changes_nothing_when_a_device_comes_and_goes(
    repo: Butler, reference: Butler, tmp_path: Path
) -> None:
    first = commands(repo, exposure_files(tmp_path, 1, range(4)))
    third = commands(repo, exposure_files(tmp_path, 3, range(4)))
    # Seen after the third, the second exposure has a new device in slot 1 from its start:
    # the third's slot 1 file, coming last, brings the old device back.
    swapped = commands(repo, exposure_files(tmp_path, 2, range(4), NEW_SERIAL))
    batches = [first, [third[0], third[2], third[3]], swapped, [third[1]]]
    remembering = RegistryHandler(repo.registry, "t")
    forgetting = RegistryHandler(reference.registry, "t")  # as before: each batch afresh
    got, expected = [], []
    for batch in batches:
        got += apply(remembering, batch)
        forgetting.applier.new_batch()
        expected += apply(forgetting, batch)
    assert results(got) == results(expected) == [("ingested", None)] * 12
    assert [o["swaps"] for o in got] == [o["swaps"] for o in expected]
    assert sum(len(o["swaps"]) for o in got) == 2  # the new device, then the old one again
    assert canonical_dump(repo.registry) == canonical_dump(reference.registry)


def test_a_differing_record_is_refused_after_its_key_was_synced(
    repo: Butler, tmp_path: Path
) -> None:
    values = commands(repo, exposure_files(tmp_path, 1, range(4)))
    handler = RegistryHandler(repo.registry, "t")
    assert results(apply(handler, values[:2])) == [("ingested", None)] * 2
    original = record_values(values[2], "exposure")
    # The same exposure (same key), one of its values differing.
    different = forged(values[2])
    set_record_field(different, "exposure", "dark_time", original["dark_time"] + 1.0)
    # Alone (in its own savepoint) and among others (first applied together): refused.
    assert results(apply(handler, [different])) == [("failed", "record_conflict")]
    assert results(apply(handler, [values[2], forged(different), values[3]])) == [
        ("ingested", None),
        ("failed", "record_conflict"),
        ("ingested", None),
    ]
    (exposure,) = repo.registry.query_dimension_records("exposure")
    assert exposure["dark_time"] == original["dark_time"]
    refs = repo.registry.query_datasets("raw", ["SimCam/raw/all"])
    assert sorted(ref.data_id["detector"] for ref, _ in refs) == [0, 1, 2, 3]


def lost_connection(*args: Any, **kwargs: Any) -> None:
    raise sqlalchemy.exc.OperationalError(
        "INSERT INTO datastore_record", {}, Exception("server closed the connection")
    )


def test_records_of_a_rolled_back_batch_are_written_by_the_next(
    repo: Butler, reference: Butler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = commands(repo, exposure_files(tmp_path, 1, range(2)))
    values = commands(repo, exposure_files(tmp_path, 2, range(6)))
    handler = RegistryHandler(repo.registry, "t")
    assert results(apply(handler, earlier)) == [("ingested", None)] * 2  # the run, "raw"...
    failing = [incoming(v) for v in values[:3]]
    # The connection is lost late in the batch, after its records were synced.
    with monkeypatch.context() as m:
        m.setattr(repo.registry, "store_files", lost_connection)
        with pytest.raises(DatabaseUnavailableError):
            handler(failing)
    assert len(repo.registry.query_dimension_records("exposure")) == 1  # nothing was kept
    # The exposure's next batch writes its records, then the failed one comes again.
    assert results(apply(handler, values[3:])) == [("ingested", None)] * 3
    assert results(outcomes(handler(failing))) == [("ingested", None)] * 3
    assert (
        results(apply(RegistryHandler(reference.registry, "one"), earlier + values))
        == [("ingested", None)] * 8
    )
    assert canonical_dump(repo.registry) == canonical_dump(reference.registry)


@pytest.mark.parametrize("together", [False, True])
def test_records_of_a_rejected_command_are_written_by_the_next(
    repo: Butler, reference: Butler, tmp_path: Path, together: bool
) -> None:
    earlier = commands(repo, exposure_files(tmp_path, 1, range(2)))
    values = commands(repo, exposure_files(tmp_path, 2, range(3)))
    handler = RegistryHandler(repo.registry, "t")
    assert results(apply(handler, earlier)) == [("ingested", None)] * 2
    # The exposure's first command syncs its records, then names a detector SimCam lacks:
    # it is refused and its savepoint, records included, rolled back.
    bad = forged(values[0])
    dataset = bad["body"][1]["datasets"][0]
    dataset["data_id"]["detector"] = 999
    dataset["dataset_id"] = str(uuid.uuid4())
    bad["body"][1]["installations"] = []
    later = values
    if together:  # after another file of the exposure: tried together, then each alone
        assert results(apply(handler, [values[1], bad])) == [
            ("ingested", None),
            ("failed", "bad_data_id"),
        ]
        assert len(repo.registry.query_dimension_records("exposure")) == 2  # the good one's
        later = [values[0], values[2]]
    else:
        assert results(apply(handler, [bad])) == [("failed", "bad_data_id")]
        assert len(repo.registry.query_dimension_records("exposure")) == 1
    assert results(apply(handler, later)) == [("ingested", None)] * len(later)
    apply(RegistryHandler(reference.registry, "one"), earlier + values)
    assert canonical_dump(repo.registry) == canonical_dump(reference.registry)


@pytest.mark.parametrize(
    "where", ["this process", "another process", "another process, then a chain command"]
)
def test_a_record_update_between_batches_is_honoured(
    repo: Butler, tmp_path: Path, where: str
) -> None:
    values = commands(repo, exposure_files(tmp_path, 1, range(4)))
    handler = RegistryHandler(repo.registry, "t")
    assert results(apply(handler, values[:2])) == [("ingested", None)] * 2
    (exposure,) = repo.registry.query_dimension_records("exposure")
    corrected = {**exposure, "dark_time": 42.0}
    if where == "this process":
        repo.registry.update_dimension_record("exposure", corrected, reason="header fixed")
    else:
        # A correction written elsewhere: the write generation moved on without the service.
        with Butler.open(repo.root, actor="pytest") as other:
            other.registry.update_dimension_record("exposure", corrected, reason="header fixed")
    with capture_logs() as logs:
        if where.endswith("chain command"):  # ... and a command that is not raw ingest
            chain = RegistryCommand.new(
                SetChain("SimCam/defaults", ("SimCam/raw/all",)), "pytest"
            ).to_value()
            handler([incoming(chain)])
        # The next file still carries the old value: it conflicts with the corrected record.
        assert results(apply(handler, [values[2]])) == [("failed", "record_conflict")]
    warned = [e["when"] for e in logs if e["event"] == "another writer committed to the registry"]
    assert warned == ([] if where == "this process" else ["since the last batch"])
    fixed = forged(values[3])
    set_record_field(fixed, "exposure", "dark_time", 42.0)
    assert results(apply(handler, [fixed])) == [("ingested", None)]
    (exposure,) = repo.registry.query_dimension_records("exposure")
    assert exposure["dark_time"] == 42.0
    audit = repo.registry.record_audit("exposure")
    assert [(a["field"], a["reason"]) for a in audit] == [("dark_time", "header fixed")]


def test_a_commit_by_another_writer_during_a_batch_is_honoured(
    repo: Butler, tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite lets one writer at a time: no commit can happen during a batch")
    values = commands(repo, exposure_files(tmp_path, 1, range(3)))
    handler = RegistryHandler(repo.registry, "t")
    assert results(apply(handler, values[:2])) == [("ingested", None)] * 2
    (exposure,) = repo.registry.query_dimension_records("exposure")
    real = handler.applier.apply_many
    attempts = []

    def correct_meanwhile(cmds: Any) -> Any:
        # Another process commits a correction after the batch began, before it syncs.
        if not attempts:
            with Butler.open(repo.root, actor="pytest") as other:
                corrected = {**exposure, "dark_time": 42.0}
                other.registry.update_dimension_record("exposure", corrected, reason="fixed")
        attempts.append(len(cmds))
        return real(cmds)

    monkeypatch.setattr(handler.applier, "apply_many", correct_meanwhile)
    # Remembered, the exposure record as this file carries it looked current: the batch is
    # applied again without the memory, and the file conflicts with the correction.
    with capture_logs() as logs:
        assert results(apply(handler, [values[2]])) == [("failed", "record_conflict")]
    assert attempts == [1, 1]
    warned = [e["when"] for e in logs if e["event"] == "another writer committed to the registry"]
    assert warned == ["while a batch was applied"]
    assert len(repo.registry.query_datasets("raw", ["SimCam/raw/all"])) == 2


def test_the_memory_is_bounded(repo: Butler) -> None:
    known = KnownRecords(repo.registry.records, limit=3)
    keys = [("detector", ("SimCam", i)) for i in range(5)]
    for key in keys[:3]:
        known.remember(key)
    assert known.exists(keys[0])  # used: kept when the next ones come
    for key in keys[3:]:
        known.remember(key)
    assert len(known) == 3
    assert [k for k in keys if known.exists(k)] == [keys[0], keys[3], keys[4]]


def test_one_batch_records_devices_in_time_order_whatever_order_its_files_come_in(
    repo: Butler, reference: Butler, tmp_path: Path
) -> None:
    first = commands(repo, exposure_files(tmp_path, 1, range(3)))
    swapped = commands(repo, exposure_files(tmp_path, 2, range(3), NEW_SERIAL))
    back = commands(repo, exposure_files(tmp_path, 3, range(3)))  # the old device again
    in_order = RegistryHandler(repo.registry, "t")
    got = [o for batch in (first, swapped, back) for o in apply(in_order, batch)]
    expected = apply(RegistryHandler(reference.registry, "t"), back + first + swapped)
    assert sum(len(o["swaps"]) for o in got) == 2  # the new device, then the old one again
    assert sorted(s["new_serial"] for o in expected for s in o["swaps"]) == sorted(
        s["new_serial"] for o in got for s in o["swaps"]
    )
    assert canonical_dump(repo.registry) == canonical_dump(reference.registry)


def test_only_registry_writes_move_the_write_generation(repo: Butler) -> None:
    db = repo.registry.db

    def now() -> int:
        with db.transaction(write=False) as conn:
            return generation.current(conn)

    before = now()
    canonical_dump(repo.registry)  # reads: a dump is no other writer to the service
    repo.registry.query_dimension_records("exposure")
    assert now() == before
    with db.transaction(write=False):  # a write joining a read-only transaction counts
        repo.registry.register_collection("u/someone/run", CollectionType.RUN)
    assert now() == db.last_generation == before + 1
    with repo.registry.transaction(), pytest.raises(RuntimeError, match="owns its batch"):
        RegistryHandler(repo.registry, "t")([])
