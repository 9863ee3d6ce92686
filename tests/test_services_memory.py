"""The four services on the in-memory bus: handlers and the service loop, no broker needed.

The same flows run against the real Kafka broker in test_services_kafka.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from services.bus.topics import (
    BLESSING_REQUESTS,
    CALIB_OUTCOMES,
    DEAD_LETTERS,
    INGEST_OUTCOMES,
    RAW_ARRIVALS,
    REGISTRY_COMMANDS,
    REGISTRY_EVENTS,
)
from services.butler import Butler
from services.core.timespan import Timespan
from services.datastore.stored import StoredFile
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.messages import BlessingRequest, DeadLetter, RegistryCommand
from services.registry.changes import ChangeSet, NewCollection
from services.registry.collections import CollectionType
from services.registry.datasets import DatasetRef, DatasetType
from tests.support import headers as hdrs
from tests.support.bus import Pipeline, decoded, memory_bus, raw_arrival, statuses


@pytest.fixture
def repo(empty_butler: Butler) -> Butler:
    for name in ("SimCam", "HSC", "DECam"):
        load_instrument(name).register(empty_butler.registry)
    return empty_butler


def test_raw_files_flow_to_the_registry(repo: Butler, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, landing)
    files = write_exposure(landing, 1, "2024-11-26T01:00:00", detectors=range(10))
    hdrs.write_single("fitsheader-hsc.yaml", landing / "hsc.fits")
    (landing / "junk.fits").write_bytes(b"x" * 2880)
    pipeline.drain()
    outcomes = decoded(bus, INGEST_OUTCOMES.name)
    assert len(outcomes) == len(files) + 2
    assert statuses(outcomes) == ["failed"] + ["ingested"] * (len(files) + 1)
    (failed,) = [o for o in outcomes if o["status"] == "failed"]
    assert failed["reason"] == "not_fits" and failed["file"].endswith("junk.fits")
    assert len(repo.registry.query_datasets("raw", ["SimCam/raw/all"])) == 10
    assert len(repo.registry.query_datasets("raw", ["HSC/raw/all"])) == 1
    events = decoded(bus, REGISTRY_EVENTS.name)
    assert sorted({e["kind"] for e in events}) == ["datasets-registered"]
    # An exposure's messages share a key, so they are on one partition, in order.
    keys = {d.key for d in bus.messages(REGISTRY_COMMANDS.name)}
    (exposure,) = [
        r["id"] for r in repo.registry.query_dimension_records("exposure", "instrument = 'SimCam'")
    ]
    assert f"SimCam/{exposure}".encode() in keys
    assert (
        len(
            {
                d.partition
                for d in bus.messages(REGISTRY_COMMANDS.name)
                if d.key and d.key.startswith(b"SimCam/")
            }
        )
        == 1
    )


def test_redelivered_commands_have_no_second_effect(repo: Butler, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, landing)
    write_exposure(landing, 1, "2024-11-26T01:00:00", detectors=range(5))
    pipeline.drain()
    first = decoded(bus, INGEST_OUTCOMES.name)
    # A second registry consumer group reading the same commands = every message redelivered.
    again = Pipeline(bus, repo, tmp_path / "empty", suffix="-again")
    again.registry.group = pipeline.registry.group  # same group identity for bus_processed
    again.registry.handler = pipeline.registry.handler
    again.registry._consumer = bus.consumer("fresh-reader", [REGISTRY_COMMANDS.name])
    again.registry.step(0.05)
    outcomes = decoded(bus, INGEST_OUTCOMES.name)
    assert len(outcomes) == 2 * len(first)
    # The answers sent again are the ones sent first: "ingested", not "already-present".
    assert statuses(outcomes[len(first) :]) == statuses(first) == ["ingested"] * 5
    assert len(repo.registry.query_datasets("raw", ["SimCam/raw/all"])) == 5


def test_undecodable_bytes_go_to_the_dead_letter_topic(repo: Butler, tmp_path: Path) -> None:
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    bus.send(REGISTRY_COMMANDS.name, b"k", b"\x00garbage")
    bus.send(RAW_ARRIVALS.name, None, b"\xc3\x01" + b"\x00" * 8)
    pipeline.drain()
    letters = decoded(bus, DEAD_LETTERS.name)
    assert sorted(d["topic"] for d in letters) == [RAW_ARRIVALS.name, REGISTRY_COMMANDS.name]
    assert all(d["error_code"] == "undecodable" for d in letters)
    garbage = next(d for d in letters if d["topic"] == REGISTRY_COMMANDS.name)
    assert garbage["value"] == b"\x00garbage" and garbage["key"] == b"k"
    assert garbage["offset"] == 0 and garbage["service"] == "registry"
    # The service goes on: a good message after the bad ones is handled.
    write_exposure(tmp_path / "landing", 1, "2024-11-26T01:00:00", detectors=[0])
    pipeline.drain()
    assert statuses(decoded(bus, INGEST_OUTCOMES.name)) == ["ingested"]


def _bless(bus: object, **fields: object) -> str:
    request_id = str(uuid.uuid4())
    request = BlessingRequest(
        **{  # type: ignore[arg-type]
            "request_id": request_id,
            "collection": "SimCam/calib/bless",
            "dataset_type": "bias",
            "run": "SimCam/calib/masters",
            "data_ids": (),
            "begin_ns": Timespan.from_times("2024-11-01", None).begin,
            "end_ns": None,
            "requested_by": "pytest",
            "reason": "new master bias",
            "adjustments": (),
            "requested_at_ns": 0,
            **fields,
        }
    )
    bus.send(BLESSING_REQUESTS.name, b"c", request.encode())  # type: ignore[attr-defined]
    return request_id


def test_blessing_request_certifies_or_is_refused(repo: Butler, tmp_path: Path) -> None:
    from services.registry.datasets import DatasetType

    registry = repo.registry
    registry.register_dataset_type(DatasetType("bias", ("instrument", "detector"), "Json", True))
    registry.register_dataset_type(DatasetType("note", ("instrument", "detector"), "Json"))
    for det in (0, 1):
        repo.put(
            {"level": det},
            "bias",
            {"instrument": "SimCam", "detector": det},
            "SimCam/calib/masters",
        )
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    ok = _bless(bus)
    pipeline.drain()
    again = _bless(bus, begin_ns=Timespan.from_times("2024-12-01", None).begin)
    wrong_type = _bless(bus, dataset_type="note")
    no_run = _bless(bus, run="nowhere")
    pipeline.drain()
    outcomes = {o["request_id"]: o for o in decoded(bus, CALIB_OUTCOMES.name)}
    assert outcomes[ok]["status"] == "blessed" and outcomes[ok]["certified"] == 2
    assert (outcomes[again]["status"], outcomes[again]["reason"]) == (
        "rejected",
        "validity_overlap",
    )
    assert outcomes[wrong_type]["reason"] == "not_a_calibration"
    assert outcomes[no_run]["reason"] == "unknown_collection"
    found = registry.find_calibration(
        "bias",
        {"instrument": "SimCam", "detector": 1},
        ["SimCam/calib/bless"],
        Timespan.at("2025-01-01"),
    )
    assert found is not None and found.ref.run == "SimCam/calib/masters"


def test_watcher_publishes_complete_files_once_across_restarts(tmp_path: Path) -> None:
    from services.handlers.watcher import Watcher

    landing = tmp_path / "landing"
    landing.mkdir()
    bus = memory_bus()
    watcher = Watcher(bus, [landing], "w1", settle_s=0.0)
    partial = landing / "growing.fits"
    partial.write_bytes(b"SIMPLE  =" + b" " * 1000)  # not a whole number of FITS blocks
    (landing / "skipped.fits.part").write_bytes(b" " * 2880)
    assert watcher.scan() == [] and watcher.scan() == []
    partial.write_bytes(b"SIMPLE  =" + b" " * (2 * 2880 - 9))  # the writer finished
    assert watcher.scan() == []  # first sight of the final size: wait one more look
    (published,) = watcher.scan()
    assert published.path == str(partial) and published.size == 2 * 2880
    # A new watcher process with the same identity learns what was published and repeats none.
    again = Watcher(bus, [landing], "w1", settle_s=0.0)
    assert again.recover() == 1
    assert again.scan() == [] and again.scan() == []
    write_exposure(landing, 2, "2024-11-26T01:00:00", detectors=[0, 1])
    again.scan()
    assert len(again.scan()) == 2
    assert len(bus.messages(RAW_ARRIVALS.name)) == 3


def test_two_ingest_workers_share_the_partitions(repo: Butler, tmp_path: Path) -> None:
    from services.bus.runner import ServiceLoop
    from services.handlers.ingest import IngestHandler

    landing = tmp_path / "landing"
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, landing)
    second = ServiceLoop(
        "ingest-2",
        bus,
        pipeline.ingest.group,
        [RAW_ARRIVALS.name],
        IngestHandler(repo, name="ingest-2"),
    )
    pipeline.loops = (pipeline.ingest, second, pipeline.registry, pipeline.calib)
    for seq in range(1, 5):  # four exposures: four landing folders, spread over partitions
        write_exposure(landing, seq, f"2024-11-26T01:0{seq}:00", detectors=range(3))
    pipeline.drain()
    first_share, second_share = pipeline.ingest.consumer.assignment(), second.consumer.assignment()
    assert first_share and second_share and first_share.isdisjoint(second_share)
    assert len(first_share | second_share) == RAW_ARRIVALS.partitions
    assert pipeline.ingest.counters.consumed + second.counters.consumed == 12
    assert statuses(decoded(bus, INGEST_OUTCOMES.name)) == ["ingested"] * 12


def test_a_rejected_command_does_not_undo_the_rest_of_its_batch(
    repo: Butler, tmp_path: Path
) -> None:

    from services.bus.runner import Incoming
    from services.bus.transport import Delivery
    from services.handlers.ingest import IngestHandler
    from services.handlers.registry import RegistryHandler

    files = write_exposure(tmp_path / "landing", 1, "2024-11-26T01:00:00", detectors=[0, 1])
    ingest = IngestHandler(repo)
    with repo.datastore.transaction(batch_sync=True) as txn:
        commands = [ingest.handle(raw_arrival(f), txn).message for f in sorted(files)]
    handler = RegistryHandler(repo.registry, "test")

    def incoming(command: RegistryCommand, offset: int) -> Incoming:
        data = command.encode()
        return Incoming(
            Delivery(REGISTRY_COMMANDS.name, 0, offset, b"k", data, 0),
            RegistryCommand.decode(data),
        )

    handler([incoming(commands[1], 0)])  # detector 1 first, on its own
    raw = commands[1].body
    forged_file = dataclasses.replace(raw.stored[0], checksum="blake2b:" + "0" * 64)
    forged = dataclasses.replace(
        commands[1],
        command_id=str(uuid.uuid4()),
        body=dataclasses.replace(raw, stored=(forged_file, *raw.stored[1:])),
    )
    out = handler([incoming(commands[0], 1), incoming(forged, 2)])
    outcomes = [o.message.to_value() for o in out if o.topic == INGEST_OUTCOMES.name]
    assert [(o["status"], o["reason"]) for o in outcomes] == [
        ("ingested", None),
        ("failed", "file_conflict"),
    ]
    refs = repo.registry.query_datasets("raw", ["SimCam/raw/all"])
    assert sorted(ref.data_id["detector"] for ref, _ in refs) == [0, 1]


def test_a_command_sent_again_is_answered_again_not_applied_again(
    repo: Butler, tmp_path: Path
) -> None:
    from services.registry.commands import Decertify
    from services.registry.datasets import DatasetType

    registry = repo.registry
    registry.register_dataset_type(DatasetType("bias", ("instrument", "detector"), "Json", True))
    repo.put({"level": 0}, "bias", {"instrument": "SimCam", "detector": 0}, "SimCam/masters")
    bus = memory_bus()
    pipeline = Pipeline(bus, repo, tmp_path / "landing")
    _bless(bus, run="SimCam/masters")
    pipeline.drain()
    # A producer's retry: the same command (same id) at a new offset, after the first applied.
    window = Timespan.from_times("2024-12-01", "2024-12-02")
    command = RegistryCommand.new(Decertify("SimCam/calib/bless", "bias", window), "pytest")
    data = command.encode()
    bus.send(REGISTRY_COMMANDS.name, b"c", data)
    pipeline.drain()
    bus.send(REGISTRY_COMMANDS.name, b"c", data)
    pipeline.drain()
    answers = [
        e for e in decoded(bus, REGISTRY_EVENTS.name) if e["command_id"] == command.command_id
    ]
    assert len(answers) == 2 and answers[0] == answers[1]
    assert answers[0]["message"] == "decertified: 1 row(s)"
    # Both copies in one batch: the first is applied, the second gets its answers.
    later = Timespan.from_times("2024-12-05", "2024-12-06")
    twice = RegistryCommand.new(Decertify("SimCam/calib/bless", "bias", later), "pytest")
    for _ in range(2):
        bus.send(REGISTRY_COMMANDS.name, b"c", twice.encode())
    pipeline.drain()
    answers = [e for e in decoded(bus, REGISTRY_EVENTS.name) if e["command_id"] == twice.command_id]
    assert len(answers) == 2 and answers[0] == answers[1]
    assert answers[0]["message"] == "decertified: 1 row(s)"
    ranges = registry.query_calibrations("SimCam/calib/bless", "bias")
    left = Timespan.from_times("2024-11-01", None).difference(window)
    expected = [piece for ts in left for piece in ts.difference(later)]
    assert sorted(str(ts) for _, ts in ranges) == sorted(str(ts) for ts in expected)


def test_replay_skips_what_the_live_service_dead_lettered(repo: Butler, tmp_path: Path) -> None:
    from services.bus.topics import DEAD_LETTERS
    from services.handlers.replay import replay
    from services.registry.changes import ChainChange, ChangeSet

    bus = memory_bus()
    for name in ("a", "b"):
        change = ChangeSet(what=name, chains=(ChainChange(f"chain-{name}", ()),))
        command = RegistryCommand.new(change, "pytest")
        bus.send(REGISTRY_COMMANDS.name, b"k", command.encode())
    reader = bus.consumer("pytest-reader", [REGISTRY_COMMANDS.name])
    (_, poisoned) = reader.poll(0.1, 10)  # say the live service dead-lettered the second
    letter = DeadLetter(
        topic=REGISTRY_COMMANDS.name,
        partition=poisoned.partition,
        offset=poisoned.offset,
        key=poisoned.key,
        value=poisoned.value,
        error="RuntimeError: poison",
        error_code="unexpected",
        service="registry",
        failed_at_ns=0,
    )
    bus.send(DEAD_LETTERS.name, b"k", letter.encode())
    counts = replay(bus, repo.registry)
    assert (counts.applied, counts.skipped, counts.refused) == (1, 1, 0)
    names = {c.name for c in repo.registry.query_collections()}
    assert "chain-a" in names and "chain-b" not in names


def test_a_change_set_is_answered_with_what_it_did_and_its_datasets(
    repo: Butler, tmp_path: Path
) -> None:
    bias = DatasetType("bias", ("instrument", "detector"), "Json", True)
    data_id = repo.registry.universe.data_id(
        bias.dimensions, {"instrument": "SimCam", "detector": 0}
    )
    ref = DatasetRef(uuid.uuid4(), bias, data_id, "SimCam/new")
    stored = StoredFile(
        ref.id,
        "SimCam/new/bias_0.json",
        "services.datastore.formatters.JsonFormatter",
        "Json",
        2,
        "blake2b:" + "0" * 128,
    )
    changes = ChangeSet(
        "register bias into SimCam/new",
        dataset_types=(bias,),
        collections=(NewCollection("SimCam/new", CollectionType.RUN),),
        datasets=(ref,),
        stored=(stored,),
    )
    bus = memory_bus()
    command = RegistryCommand.new(changes, "pytest")
    bus.send(REGISTRY_COMMANDS.name, b"obsbus/writes", command.encode())
    Pipeline(bus, repo, tmp_path / "landing").drain()
    (answer,) = [
        e for e in decoded(bus, REGISTRY_EVENTS.name) if e["command_id"] == command.command_id
    ]
    assert answer["kind"] == "changes-applied"
    assert answer["message"] == "register bias into SimCam/new: 3 row(s)"
    assert answer["dataset_ids"] == [str(ref.id)]
    assert repo.registry.get_dataset(ref.id).run == "SimCam/new"
