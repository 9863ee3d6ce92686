"""The services as real processes over the real Kafka broker (started by `make test`).

Each test has its own topic namespace on the shared broker, so tests never see each other's
messages.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.bus.topics import DEAD_LETTERS, INGEST_OUTCOMES, REGISTRY_COMMANDS
from services.butler import Butler
from services.instruments.base import RAW
from services.instruments.simcam import write_exposure
from services.registry.datasets import DatasetType, IdGenerationMode, make_dataset_id
from services.registry.dump import canonical_dump
from tests.support import headers as hdrs
from tests.support.services import Services, kafka_bootstrap, new_repo

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    kafka_bootstrap()
    repo = new_repo(tmp_path / "repo")
    landing = tmp_path / "landing"
    landing.mkdir()
    running = Services(repo, landing, tmp_path)
    yield running
    running.stop()


def test_end_to_end_real_and_simulated_files(services: Services) -> None:
    services.start("registry", "calib", "ingest", "watcher")
    simcam = write_exposure(services.landing, 1, "2024-11-26T01:00:00", detectors=range(20))
    hdrs.write_single("fitsheader-hsc.yaml", services.landing / "HSC-904024-050.fits")
    hdrs.write_mef(
        "fitsheader-decam.yaml",
        services.landing / "DECam_00229388.fits",
        [{"CCDNUM": 25, "DETPOS": "S1"}, {"CCDNUM": 26, "DETPOS": "S2"}],
    )
    (services.landing / "broken.fits").write_bytes(b"SIMPLE  =" + b" " * 2871)
    hdrs.write_single("fitsheader-megaprime.yaml", services.landing / "megaprime.fits")
    expected = len(simcam) + 4
    outcomes = services.messages(INGEST_OUTCOMES.name, expected)
    assert len(outcomes) == expected, services.logs()
    by_file = {Path(o["file"]).name: o for o in outcomes}
    assert by_file["broken.fits"]["reason"] == "truncated"
    assert by_file["megaprime.fits"]["reason"] == "no_such_instrument"
    assert by_file["DECam_00229388.fits"]["status"] == "ingested"
    assert sorted(by_file["DECam_00229388.fits"]["detectors"]) == [25, 26]
    assert sum(o["status"] == "ingested" for o in outcomes) == len(simcam) + 2
    assert services.alive() == ["calib", "ingest", "registry", "watcher"]
    with Butler.open(services.repo) as butler:
        raws = butler.registry.query_datasets(
            "raw", ["SimCam/raw/all", "HSC/raw/all", "DECam/raw/all"]
        )
        assert len(raws) == len(simcam) + 3


def test_kill_9_mid_exposure_then_restart_registers_every_file_once(
    services: Services, tmp_path: Path
) -> None:
    services.start("registry", "ingest", "watcher")
    files = write_exposure(services.landing, 7, "2024-11-26T02:00:00")
    assert len(files) == 205
    # Let part of the exposure through, then kill both services without warning.
    services.messages(INGEST_OUTCOMES.name, 40)
    services.kill9("registry", "ingest")
    services.start("registry", "ingest")
    wanted = {str(f) for f in files}

    # Redelivered commands send their answers again, so count files, not messages. An arrival
    # handled again after the crash sends the same command again (same id): answered again
    # ("ingested"), never applied twice (no "already-present").
    outcomes = services.messages(
        INGEST_OUTCOMES.name, lambda out: {o["file"] for o in out} >= wanted
    )
    assert {o["file"] for o in outcomes} >= wanted, services.logs()
    assert {o["status"] for o in outcomes} == {"ingested"}
    exposure = 2024112500007
    expected_ids = {
        str(
            make_dataset_id(
                "raw",
                RAW_ID(detector, exposure),
                "SimCam/raw/all",
                IdGenerationMode.DATAID_TYPE_RUN,
            )
        )
        for detector in range(205)
    }
    with Butler.open(services.repo) as butler:
        refs = butler.registry.query_datasets("raw", ["SimCam/raw/all"])
        assert len(refs) == 205
        assert {str(ref.id) for ref, _ in refs} == expected_ids
        live = canonical_dump(butler.registry, history=True)
    # Replay: a fresh registry built from the command topic from offset 0 is identical.
    fresh = new_repo(tmp_path / "fresh")
    services.replay(fresh)
    with Butler.open(fresh) as butler:
        assert canonical_dump(butler.registry, history=True) == live


def RAW_ID(detector: int, exposure: int) -> Any:  # noqa: N802 - reads like the data ID it is
    from services.core.dimensions import default_universe

    return default_universe().data_id(
        RAW.dimensions, {"instrument": "SimCam", "exposure": exposure, "detector": detector}
    )


def test_undecodable_bytes_are_dead_lettered_and_service_goes_on(services: Services) -> None:
    services.start("registry", "ingest", "watcher")
    services.bus.send(REGISTRY_COMMANDS.name, b"bad", b"definitely not avro")
    services.bus.flush()
    (letter,) = services.messages(DEAD_LETTERS.name, 1)
    assert letter["topic"] == REGISTRY_COMMANDS.name and letter["error_code"] == "undecodable"
    assert letter["value"] == b"definitely not avro" and letter["service"] == "registry"
    write_exposure(services.landing, 3, "2024-11-26T03:00:00", detectors=range(3))
    outcomes = services.messages(INGEST_OUTCOMES.name, 3)
    assert [o["status"] for o in outcomes] == ["ingested"] * 3, services.logs()


def test_bless_over_the_bus(services: Services) -> None:
    with Butler.open(services.repo) as butler:
        butler.registry.register_dataset_type(
            DatasetType("bias", ("instrument", "detector"), "Json", True)
        )
        for det in (0, 1):
            butler.put(
                {"level": det},
                "bias",
                {"instrument": "SimCam", "detector": det},
                "SimCam/calib/masters",
            )
    services.start("registry", "calib")
    bless = [
        sys.executable,
        "-m",
        "services.cli.main",
        "bless",
        str(services.repo),
        "--collection",
        "SimCam/calib/2024",
        "--dataset-type",
        "bias",
        "--run",
        "SimCam/calib/masters",
        "--begin-date",
        "2024-11-01",
        "--timeout",
        "120",
    ]
    first = subprocess.run(bless, env=services.env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr + services.logs()
    assert "blessed into SimCam/calib/2024" in first.stdout
    repeat = subprocess.run(bless, env=services.env, capture_output=True, text=True, timeout=300)
    assert repeat.returncode == 0 and "0 validity range(s)" in repeat.stdout  # a no-op
    overlapping = [*bless[:-3], "2024-12-01", *bless[-2:]]
    second = subprocess.run(
        overlapping, env=services.env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 1
    assert "blessing rejected [validity_overlap]" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
