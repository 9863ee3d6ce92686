"""Raw ingest from real telescope headers (DECam, HSC, MegaPrime, SuprimeCam, bad ones).

Each FITS file is built at test time from a real header dump; what the registry records is
compared with what astro_metadata_translator says of the same header.
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from astropy.time import Time

from services.butler import Butler
from services.cli.main import main
from services.core.timespan import time_to_ns
from services.ingest.headers import configure_offline_translation
from services.ingest.observation import exposure_timespan
from services.ingest.raws import IngestOutcome, RawIngester, find_raw_files
from services.instruments import load_instrument
from services.messages import DetectorSwap
from tests.support import headers as hdrs

HSC = "fitsheader-hsc.yaml"  # detector 50, exposure 904024
HSC2 = "fitsheader-hsc-HSCA04090107.yaml"  # detector 37, exposure 40900
DECAM = "fitsheader-decam.yaml"  # CCDNUM 25, exposure 229388
DECAM_CCDS = [
    {"CCDNUM": 25, "DETPOS": "S1", "DETECTOR": "S3-111_107419-8-3"},
    {"CCDNUM": 26, "DETPOS": "S2"},
    {"CCDNUM": 61, "DETPOS": "N30"},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Translation must work with no network at all: any connection attempt fails the test."""
    configure_offline_translation()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def repo(empty_butler: Butler) -> Iterator[Butler]:
    for name in ("HSC", "DECam"):
        load_instrument(name).register(empty_butler.registry)
    yield empty_butler


def ingest(butler: Butler, *paths: Path, transfer: str = "copy") -> list[IngestOutcome]:
    return list(RawIngester(butler, transfer=transfer).ingest(paths))


def test_hsc_raw_matches_the_translator(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_single(HSC, tmp_path / "HSCA90402450.fits")
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    info = hdrs.translate_dump(HSC)
    assert (outcome.instrument, outcome.exposure, outcome.detectors) == (
        "HSC",
        info.exposure_id,
        (info.detector_num,),
    )
    record = repo.registry.fetch_dimension_record(
        "exposure", {"instrument": "HSC", "id": info.exposure_id}
    )
    assert record is not None
    assert record["obs_id"] == info.observation_id
    assert record["physical_filter"] == info.physical_filter == "HSC-I"
    assert record["day_obs"] == info.observing_day
    assert record["exposure_time"] == pytest.approx(info.exposure_time.to_value("s"))
    assert record["observation_type"] == "science"
    assert record["timespan"].begin == time_to_ns(info.datetime_begin)
    assert record["timespan"].end == time_to_ns(info.datetime_end)
    assert record["tracking_ra"] == pytest.approx(info.tracking_radec.ra.deg)
    assert record["science_program"] == info.science_program
    visit = repo.registry.fetch_dimension_record(
        "visit", {"instrument": "HSC", "id": info.exposure_id}
    )
    assert visit is not None and visit["physical_filter"] == "HSC-I"
    # The dataset reads back through its record alone, with the instrument's formatter.
    match = repo.find(
        "raw",
        {"instrument": "HSC", "exposure": info.exposure_id, "detector": info.detector_num},
        ["HSC/raw/all"],
    )
    assert str(match.ref.id) == outcome.dataset_ids[0]
    assert repo.stored_file(match.ref).formatter == "services.instruments.hsc.HscRawFormatter"
    np.testing.assert_array_equal(repo.get(match.ref), hdrs.pixels())
    serial = repo.registry.installed_detector("HSC", 50, time_to_ns(info.datetime_begin))
    assert serial == str(info.detector_serial)


def test_hsc_corner_ccd_gets_its_own_formatter(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_single(HSC, tmp_path / "corner.fits", **{"DET-ID": 100, "T_CCDSN": None})
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    ref = repo.registry.get_dataset(uuid.UUID(outcome.dataset_ids[0]))
    stored = repo.stored_file(ref)
    assert ref.data_id["detector"] == 100
    assert stored.formatter == "services.instruments.hsc.HscCornerRawFormatter"
    # The corner CCDs are read turned relative to the others (see HscCornerRawFormatter).
    np.testing.assert_array_equal(repo.get(ref), np.rot90(hdrs.pixels(), 2))


def test_decam_file_yields_one_dataset_per_ccd(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_mef(DECAM, tmp_path / "c4d_130901_060255_ori.fits", DECAM_CCDS)
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    assert sorted(outcome.detectors) == [25, 26, 61]
    refs = [ref for ref, _ in repo.registry.query_datasets("raw", ["DECam/raw/all"])]
    assert len(refs) == 3
    paths = {repo.stored_file(r).path for r in refs}
    assert len(paths) == 1  # one file in the datastore, three datasets pointing into it
    for ref in refs:
        index = [c["CCDNUM"] for c in DECAM_CCDS].index(ref.data_id["detector"])
        np.testing.assert_array_equal(repo.get(ref), hdrs.pixels(index))
        header = repo.get(ref, "metadata")
        assert header["CCDNUM"] == ref.data_id["detector"]
    info = hdrs.translate_dump(DECAM)
    record = repo.registry.fetch_dimension_record(
        "exposure", {"instrument": "DECam", "id": info.exposure_id}
    )
    assert record is not None and record["physical_filter"] == info.physical_filter


def test_zero_length_bias_exposure(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_mef("fitsheader-decam-0160496.yaml", tmp_path / "zero.fits", DECAM_CCDS[:1])
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested", outcome.message
    record = repo.registry.fetch_dimension_record(
        "exposure", {"instrument": "DECam", "id": outcome.exposure}
    )
    assert record is not None and record["observation_type"] == "zero"
    info = hdrs.translate_dump("fitsheader-decam-0160496.yaml")
    assert record["timespan"].begin == time_to_ns(info.datetime_begin)
    assert record["timespan"].end == time_to_ns(info.datetime_end)
    no_visit = repo.registry.fetch_dimension_record(
        "visit", {"instrument": "DECam", "id": outcome.exposure}
    )
    assert no_visit is None  # visits are for science exposures


def test_zero_duration_gets_an_instant() -> None:
    t = Time("2024-01-01T00:00:00", scale="tai")
    timespan = exposure_timespan(SimpleNamespace(datetime_begin=t, datetime_end=t))  # type: ignore[arg-type]
    assert timespan.end == timespan.begin + 1  # not empty: the exposure still has a time


def test_repeat_is_a_no_op_and_a_different_file_is_a_conflict(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_single(HSC2, tmp_path / "a.fits")
    assert [o.status for o in ingest(repo, path)] == ["ingested"]
    again = ingest(repo, path, path)
    assert [o.status for o in again] == ["already-present", "already-present"]
    assert again[0].dataset_ids == ingest(repo, path)[0].dataset_ids
    other = tmp_path / "b.fits"
    hdrs.write_single(HSC2, other, OBSNOTE="a different file")
    (conflict,) = ingest(repo, other)
    assert (conflict.status, conflict.reason) == ("failed", "file_conflict")
    assert "already exists with different content" in conflict.message


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _text(d / "notes.fits", "hello"), "not_fits"),
        (lambda d: _truncated(d / "cut.fits"), "truncated"),
        (
            lambda d: shutil.copy(hdrs.header_dir() / "small.fits", d / "small.fits"),
            "no_translator",
        ),
        (
            lambda d: hdrs.write_single("fitsheader-megaprime.yaml", d / "mp.fits"),
            "no_such_instrument",
        ),
        (
            lambda d: hdrs.write_single("bad-megaprime.yaml", d / "bad-mp.fits"),
            "no_such_instrument",
        ),
        (
            lambda d: hdrs.write_single("fitsheader-suprimecam-CORR40535770.yaml", d / "sc.fits"),
            "no_such_instrument",
        ),
        (
            lambda d: hdrs.write_single(
                HSC,
                d / "nodate.fits",
                **{
                    "DATE-OBS": None,
                    "MJD": None,
                    "MJD-STR": None,
                    "MJD-END": None,
                    "UT": None,
                    "UT-STR": None,
                    "UT-END": None,
                },
            ),
            "incomplete_header",
        ),
        (lambda d: hdrs.write_single(HSC, d / "filter.fits", FILTER01="HSC-XX"), "unknown_filter"),
    ],
)
def test_bad_input_fails_cleanly(repo: Butler, tmp_path: Path, make: Any, reason: str) -> None:
    bad = make(tmp_path)
    good = hdrs.write_single(HSC2, tmp_path / "good.fits")
    outcomes = ingest(repo, Path(bad), good)
    assert [o.status for o in outcomes] == ["failed", "ingested"]
    assert outcomes[0].reason == reason, outcomes[0].message
    assert "\n" not in outcomes[0].message and outcomes[0].message
    # Nothing of the bad file was written: one exposure (the good one) in the registry.
    assert len(repo.registry.query_dimension_records("exposure")) == 1


def test_unregistered_instrument_writes_nothing(empty_butler: Butler, tmp_path: Path) -> None:
    load_instrument("HSC").register(empty_butler.registry)
    path = hdrs.write_mef(DECAM, tmp_path / "decam.fits", DECAM_CCDS[:1])
    (outcome,) = ingest(empty_butler, path)
    assert (outcome.status, outcome.reason) == ("failed", "instrument_not_registered")
    assert "obsbus register-instrument REPO DECam" in outcome.message
    assert empty_butler.registry.query_dimension_records("exposure") == []
    assert [p for p in empty_butler.datastore.root.rglob("*") if p.is_file()] == []


def test_conflicting_exposure_metadata_writes_nothing(repo: Butler, tmp_path: Path) -> None:
    first = hdrs.write_single(HSC, tmp_path / "det50.fits")
    # The same exposure seen from detector 51, but with a different exposure time.
    second = hdrs.write_single(
        HSC, tmp_path / "det51.fits", **{"DET-ID": 51, "EXPTIME": 31.0, "T_CCDSN": None}
    )
    outcomes = ingest(repo, first, second)
    assert [o.status for o in outcomes] == ["ingested", "failed"]
    assert outcomes[1].reason == "record_conflict"
    assert "exposure_time: 30.0 -> 31.0" in outcomes[1].message
    assert len(list(repo.registry.query_datasets("raw", ["HSC/raw/all"]))) == 1


def test_sensor_swap_is_recorded(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_single(HSC, tmp_path / "swapped.fits", T_CCDSN="999")
    (outcome,) = ingest(repo, path)
    assert outcome.status == "ingested"
    assert outcome.swaps == (DetectorSwap(detector=50, old_serial="120", new_serial="999"),)
    begin = time_to_ns(hdrs.translate_dump(HSC).datetime_begin)
    assert repo.registry.installed_detector("HSC", 50, begin) == "999"
    assert repo.registry.installed_detector("HSC", 50, begin - 1) == "120"


def test_transfer_direct_leaves_the_file_in_place(repo: Butler, tmp_path: Path) -> None:
    path = hdrs.write_single(HSC, tmp_path / "direct.fits")
    (outcome,) = ingest(repo, path, transfer="direct")
    ref = repo.registry.get_dataset(uuid.UUID(outcome.dataset_ids[0]))
    assert repo.uri(ref) == path.resolve().as_uri()


def test_cli_exit_status_and_json(
    repo: Butler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    hdrs.write_single(HSC, landing / "a.fits")
    hdrs.write_mef(DECAM, landing / "b.fits", DECAM_CCDS)
    assert main(["ingest-raws", str(repo.root), str(landing), "--json"]) == 0
    outcomes = json.loads(capsys.readouterr().out)
    assert sorted(o["status"] for o in outcomes) == ["ingested", "ingested"]
    _text(landing / "junk.fits", "not fits")
    assert main(["ingest-raws", str(repo.root), str(landing), "--json"]) == 1
    outcomes = json.loads(capsys.readouterr().out)
    assert sorted((o["status"], o["reason"]) for o in outcomes) == [
        ("already-present", None),
        ("already-present", None),
        ("failed", "not_fits"),
    ]
    assert main(["ingest-raws", str(repo.root), str(landing)]) == 1
    captured = capsys.readouterr()
    assert "failed [not_fits]" in captured.err


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _truncated(path: Path) -> Path:
    hdrs.write_single(HSC, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    return path


def test_fail_fast_stops_at_the_first_failure(repo: Butler, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _text(landing / "a-junk.fits", "not fits")  # sorted first
    hdrs.write_single(HSC, landing / "b.fits")
    outcomes = list(RawIngester(repo).ingest(find_raw_files([landing]), fail_fast=True))
    assert [(o.status, o.reason) for o in outcomes] == [("failed", "not_fits")]
    assert repo.registry.query_dimension_records("exposure") == []
    outcomes = list(RawIngester(repo).ingest(find_raw_files([landing])))
    assert [o.status for o in outcomes] == ["failed", "ingested"]


def test_direct_repeat_of_a_different_file_is_a_conflict(repo: Butler, tmp_path: Path) -> None:
    first = hdrs.write_single(HSC2, tmp_path / "first.fits")
    second = hdrs.write_single(HSC2, tmp_path / "second.fits", OBSNOTE="another file")
    assert [o.status for o in ingest(repo, first, transfer="direct")] == ["ingested"]
    (outcome,) = ingest(repo, second, transfer="direct")
    assert (outcome.status, outcome.reason) == ("failed", "file_conflict")
    assert "already holds a different raw" in outcome.message
