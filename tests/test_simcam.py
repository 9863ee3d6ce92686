"""SimCam: the simulated LSSTCam-like instrument, its translator, its generator and its CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from astro_metadata_translator import PROPERTIES, MetadataTranslator, ObservationInfo
from astropy.coordinates import AltAz, angular_separation
from astropy.io import fits
from astropy.utils import iers

from services.butler import Butler
from services.cli import simcam_commands as simcam_cli
from services.datastore.formatters import FitsImageFormatter
from services.instruments import load_instrument
from services.instruments.simcam import (
    ExposureSpec,
    SimCam,
    SimCamTranslator,
    generate_night,
    plan_night,
    write_exposure,
)
from services.instruments.simcam.generator import to_tai
from services.instruments.simcam.instrument import detector_by_name
from services.instruments.simcam.translator import CARDS, KEYWORDS

START = "2024-11-26T01:00:00"  # TAI; day_obs 20241125


def _info(path: Path) -> ObservationInfo:
    return ObservationInfo(fits.getheader(path), pedantic=True, filename=str(path))


# --- the instrument --------------------------------------------------------------------------


def test_detectors_are_lsstcam_like() -> None:
    dets = SimCam.detectors
    purposes = Counter(d.purpose for d in dets)
    assert len(dets) == 205
    assert purposes == {"science": 189, "wavefront": 8, "guider": 8}
    assert [d.id for d in dets] == list(range(205))
    assert len({d.full_name for d in dets}) == 205
    assert len({d.serial for d in dets}) == 205
    assert all(d.purpose == "science" for d in dets[:189])
    # LSSTCam's numbering: raft-major science, then the corners SG0, SG1, SW0, SW1.
    assert (dets[0].full_name, dets[94].full_name, dets[188].full_name) == (
        "R01_S00",
        "R22_S11",
        "R43_S22",
    )
    corner = {d.full_name: d.id for d in dets[189:]}
    assert corner["R00_SG0"] == 189 and corner["R00_SW0"] == 191 and corner["R44_SW1"] == 204
    assert all(re.fullmatch(r"R[0-4][0-4]_S[0-2][0-2]", d.full_name) for d in dets[:189])
    assert all(re.fullmatch(r"R(00|04|40|44)_S[GW][01]", d.full_name) for d in dets[189:])
    assert all(re.fullmatch(r"(ITL-3800C|E2V-CCD250)-\d{3}", d.serial) for d in dets)
    assert all(d.serial.startswith("ITL") for d in dets[189:])
    assert {d.purpose for d in dets if "_SW" in d.full_name} == {"wavefront"}
    assert {d.purpose for d in dets if "_SG" in d.full_name} == {"guider"}
    assert detector_by_name("R22_S11") == SimCam.detector(94)


def test_serials_are_stable() -> None:
    # Deterministic from the id: a fixed expectation guards against accidental renumbering.
    assert SimCam.detector(0).serial == "ITL-3800C-100"
    assert SimCam.detector(94).serial == "E2V-CCD250-918"
    assert SimCam.detector(204).serial == "ITL-3800C-688"


def test_filters_and_records() -> None:
    bands = {f.physical_filter: f.band for f in SimCam.filters}
    assert bands == {
        "u_24": "u",
        "g_6": "g",
        "r_57": "r",
        "i_39": "i",
        "z_20": "z",
        "y_10": "y",
        "empty": "white",
    }
    records = SimCam.records()
    assert records["instrument"][0]["detector_max"] == 205
    assert records["instrument"][0]["exposure_max"] > 20991231 * 100_000 + 99_999
    assert len(records["detector"]) == len(records["physical_detector"]) == 205
    assert SimCam.translator is SimCamTranslator


def test_entry_point_and_registration(empty_butler: Butler) -> None:
    assert load_instrument("SimCam") is SimCam
    assert load_instrument("services.instruments.simcam.SimCam") is SimCam
    first = SimCam.register(empty_butler.registry)
    assert first["detector"] == 205 and first["physical_filter"] == 7
    assert sum(SimCam.register(empty_butler.registry).values()) == 0


# --- the header table and the translator -----------------------------------------------------


def test_card_table_is_the_translators_source() -> None:
    keywords = [c.keyword for c in CARDS]
    assert len(keywords) == len(set(keywords))
    assert all(len(k) <= 8 and re.fullmatch(r"[A-Z0-9_-]+", k) for k in keywords)
    trivial = {c.prop: c.keyword for c in CARDS if c.prop is not None}
    mapped = {
        prop: entry if isinstance(entry, str) else entry[0]
        for prop, entry in SimCamTranslator._trivial_map.items()
    }
    assert mapped == trivial
    assert set(trivial) <= set(PROPERTIES)
    assert set(SimCamTranslator._const_map) <= set(PROPERTIES)


def test_science_header_round_trips(tmp_path: Path) -> None:
    paths = write_exposure(
        tmp_path,
        7,
        START,
        ExposureSpec("OBJECT", physical_filter="i_39", exposure_time=25.0),
        seed=3,
        detectors=[94, 191],
    )
    assert [p.name for p in paths] == [
        "SC_O_20241125_000007_R22_S11.fits",
        "SC_O_20241125_000007_R00_SW0.fits",
    ]
    assert paths[0].parent == tmp_path / "20241125" / "000007"
    header = fits.getheader(paths[0])
    assert [k for k in header if k in KEYWORDS] == [c.keyword for c in CARDS]  # table order

    translator_class = MetadataTranslator.determine_translator(header, str(paths[0]))
    assert translator_class is SimCamTranslator
    info = ObservationInfo(header.copy(), pedantic=True, filename=str(paths[0]))
    for prop in PROPERTIES:  # every property translates, and to a value
        assert getattr(info, prop) is not None, prop

    exposure_id = 20241125 * 100_000 + 7
    assert info.instrument == "SimCam"
    assert info.telescope == header["TELESCOP"]
    assert info.exposure_id == info.visit_id == exposure_id
    assert info.detector_exposure_id == exposure_id * 1000 + 94
    assert info.observation_id == "SC_O_20241125_000007"
    assert info.observing_day == 20241125 and info.observation_counter == 7
    assert info.observing_day_offset.to_value(u.h) == 12
    assert info.observation_type == "science" and info.can_see_sky is True
    assert info.observation_reason == header["REASON"]
    assert info.science_program == header["PROGRAM"]
    assert info.object == header["OBJECT"]
    assert info.physical_filter == "i_39"
    assert info.exposure_time.to_value(u.s) == 25.0
    assert info.exposure_time_requested.to_value(u.s) == 25.0
    assert info.dark_time.to_value(u.s) == pytest.approx(25.3)
    assert info.datetime_begin.scale == "tai" and info.datetime_begin.isot == f"{START}.000"
    assert (info.datetime_end - info.datetime_begin).to_value(u.s) == pytest.approx(25.0)
    assert info.observing_day == int(
        (info.datetime_begin - info.observing_day_offset).strftime("%Y%m%d")
    )
    assert (info.detector_num, info.detector_name, info.detector_group) == (94, "S11", "R22")
    assert info.detector_unique_name == "R22_S11"
    assert info.detector_serial == SimCam.detector(94).serial
    assert info.exposure_group == header["GROUPID"]
    assert info.group_counter_start == info.group_counter_end == 7
    assert info.tracking_radec.ra.deg == pytest.approx(header["RA"])
    assert info.tracking_radec.dec.deg == pytest.approx(header["DEC"])
    assert info.tracking_radec.frame.name == "icrs"
    assert info.altaz_begin.az.deg == pytest.approx(header["AZSTART"])
    assert info.altaz_begin.alt.deg == pytest.approx(header["ELSTART"])
    assert info.altaz_begin.obstime == info.datetime_begin
    assert info.altaz_end.alt.deg == pytest.approx(header["ELEND"])
    assert info.boresight_airmass == header["AMSTART"]
    assert info.boresight_rotation_angle.deg == pytest.approx(header["ROTPA"])
    assert info.boresight_rotation_coord == "sky"
    assert info.location.lat.deg == pytest.approx(-30.244639)
    assert info.location.lon.deg == pytest.approx(-70.749417)
    assert info.location.height.to_value(u.m) == pytest.approx(2663.0)
    assert info.temperature.to_value(u.deg_C) == header["AIRTEMP"]
    assert info.pressure.to_value(u.hPa) == header["PRESSURE"]
    assert info.relative_humidity == header["HUMIDITY"]
    assert info.focus_z.to_value(u.mm) == 0.0
    assert info.has_simulated_content is True

    wavefront = _info(paths[1])
    assert (wavefront.detector_num, wavefront.detector_unique_name) == (191, "R00_SW0")


def test_translator_reads_only_table_cards(tmp_path: Path) -> None:
    (path,) = write_exposure(tmp_path, 1, START, detectors=[0])
    translator = SimCamTranslator(fits.getheader(path))
    for prop in PROPERTIES:
        getattr(translator, f"to_{prop}")()
    assert translator.cards_used() <= set(KEYWORDS)
    assert {"DATE-BEG", "DAYOBS", "SEQNUM", "RA", "AZSTART", "DETECTOR"} <= translator.cards_used()


@pytest.mark.parametrize(
    ("img_type", "obs_type", "physical_filter"),
    [("BIAS", "bias", "empty"), ("DARK", "dark", "empty"), ("FLAT", "flat", "r_57")],
)
def test_calibration_headers(
    tmp_path: Path, img_type: str, obs_type: str, physical_filter: str
) -> None:
    (path,) = write_exposure(tmp_path, 2, START, ExposureSpec(img_type), detectors=[10])
    info = _info(path)
    assert info.observation_type == obs_type
    assert info.physical_filter == physical_filter
    assert info.can_see_sky is False
    assert info.science_program == "calib"
    # No sky pointing for calibrations; the mount position is still recorded.
    assert info.tracking_radec is None and info.boresight_airmass is None
    assert info.boresight_rotation_angle is None
    assert info.altaz_begin is not None
    if img_type == "BIAS":
        assert info.exposure_time.to_value(u.s) == 0.0
        assert info.datetime_end == info.datetime_begin


def test_science_header_without_pointing_fails(tmp_path: Path) -> None:
    (path,) = write_exposure(tmp_path, 1, START, detectors=[0])
    header = fits.getheader(path)
    del header["RA"], header["DEC"], header["AMSTART"]
    with pytest.raises(KeyError, match=r"tracking_radec|boresight_airmass"):
        ObservationInfo(header, pedantic=True)


def test_pointing_agrees_with_astropy(tmp_path: Path) -> None:
    for seq, hour in enumerate((0, 3, 6), start=1):
        when = datetime(2024, 11, 26, hour, 15)
        (path,) = write_exposure(tmp_path, seq, when, detectors=[0], seed=seq)
        info = _info(path)
        with (
            iers.conf.set_temp("auto_download", False),
            iers.conf.set_temp("iers_degraded_accuracy", "ignore"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            frame = AltAz(obstime=info.datetime_begin, location=info.location)
            expected = info.tracking_radec.transform_to(frame)
        sep = angular_separation(
            info.altaz_begin.az, info.altaz_begin.alt, expected.az, expected.alt
        )
        assert sep.to_value(u.deg) < 0.05
        assert 35 <= info.altaz_begin.alt.deg <= 85
        # Kasten-Young airmass of the start elevation
        assert 1.0 < info.boresight_airmass < 1.8


# --- the generator ---------------------------------------------------------------------------


def test_generate_two_exposures(tmp_path: Path) -> None:
    paths = generate_night(tmp_path, 2, START, 40.0, seed=1)
    assert len(paths) == 410 and len(set(paths)) == 410
    assert all(p.exists() for p in paths)
    assert not list(tmp_path.rglob("*.part"))
    exposures = set()
    for path in [*paths[::41], paths[204], paths[205], paths[409]]:
        with fits.open(path) as hdus:
            hdus.verify("exception")
            assert hdus[0].data.dtype == np.uint16 and hdus[0].data.shape == (16, 16)
            header = hdus[0].header
        assert MetadataTranslator.determine_translator(header, str(path)) is SimCamTranslator
        info = ObservationInfo(header, pedantic=True, filename=str(path))
        exposures.add(info.exposure_id)
        assert path.name == f"{info.observation_id}_{info.detector_unique_name}.fits"
    assert exposures == {2024112500001, 2024112500002}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    a = write_exposure(tmp_path / "a", 1, START, seed=5, detectors=[3, 200])
    b = write_exposure(tmp_path / "b", 1, START, seed=5, detectors=[3, 200])
    c = write_exposure(tmp_path / "c", 1, START, seed=6, detectors=[3, 200])
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    assert a[0].stat().st_size % 2880 == 0


def test_pixels_by_image_type(tmp_path: Path) -> None:
    means = {}
    for seq, img_type in enumerate(("BIAS", "DARK", "FLAT", "OBJECT"), start=1):
        (path,) = write_exposure(tmp_path, seq, START, ExposureSpec(img_type), detectors=[40])
        pixels = FitsImageFormatter().read(path)  # what the butler's raw formatter returns
        assert pixels.dtype == np.uint16
        means[img_type] = float(pixels.mean())
    assert 15000 < means["BIAS"] < 17100
    assert means["DARK"] == pytest.approx(means["BIAS"], abs=5)
    assert means["FLAT"] > means["BIAS"] + 10000
    assert means["OBJECT"] > means["BIAS"] + 300


def test_night_plan_and_groups(tmp_path: Path) -> None:
    plan = plan_night(20)
    kinds = Counter(s.img_type for s in plan)
    assert kinds == {"BIAS": 2, "DARK": 1, "FLAT": 2, "OBJECT": 15}
    assert [s.img_type for s in plan[:5]] == ["BIAS", "BIAS", "DARK", "FLAT", "FLAT"]
    assert [s.img_type for s in plan_night(2)] == ["BIAS", "DARK"]
    assert [s.img_type for s in plan_night(4)] == ["BIAS", "DARK", "FLAT", "OBJECT"]

    paths = generate_night(tmp_path, 7, START, 20.0, detectors=[0])  # bias, dark, flat, 4 sci
    infos = [_info(p) for p in paths]
    assert [i.observation_type for i in infos] == ["bias", "dark", "flat"] + ["science"] * 4
    assert [i.observation_counter for i in infos] == list(range(1, 8))
    begins = [i.datetime_begin for i in infos]
    assert all((b - a).to_value(u.s) == pytest.approx(20.0) for a, b in itertools.pairwise(begins))
    # exposures are shortened to fit the cadence (20 s minus readout)
    assert infos[-1].exposure_time.to_value(u.s) == pytest.approx(19.7)
    assert len({i.exposure_group for i in infos}) == 7


def test_calibration_sequence_shares_a_group(tmp_path: Path) -> None:
    paths = generate_night(tmp_path, 30, START, 40.0, detectors=[0])[:5]  # 3 bias, dark, flat
    infos = [_info(p) for p in paths]
    assert [i.observation_type for i in infos] == ["bias", "bias", "bias", "dark", "flat"]
    assert len({i.exposure_group for i in infos[:3]}) == 1
    assert infos[0].exposure_group == "2024-11-26T01:00:00.000"
    assert [(i.group_counter_start, i.group_counter_end) for i in infos[:3]] == [(1, 3)] * 3
    assert infos[3].exposure_group != infos[0].exposure_group


def test_times(tmp_path: Path) -> None:
    assert to_tai("2024-11-26T01:00:00") == datetime(2024, 11, 26, 1)
    aware = datetime(2024, 11, 26, 1, tzinfo=UTC)
    assert to_tai(aware) == datetime(2024, 11, 26, 1, 0, 37)
    assert to_tai("2024-11-26T01:00:00Z") == datetime(2024, 11, 26, 1, 0, 37)
    # day_obs rolls over at 12:00 TAI
    (before,) = write_exposure(tmp_path, 1, "2024-11-26T11:59:59", detectors=[0])
    (after,) = write_exposure(tmp_path, 1, "2024-11-26T12:00:00", detectors=[0])
    assert _info(before).observing_day == 20241125
    assert _info(after).observing_day == 20241126
    with pytest.raises(ValueError, match="sequence number"):
        write_exposure(tmp_path, 100_000, START)
    with pytest.raises(ValueError, match="no filter"):
        write_exposure(tmp_path, 1, START, ExposureSpec(physical_filter="HSC-R"))
    with pytest.raises(ValueError, match="no detectors"):
        write_exposure(tmp_path, 1, START, detectors=[205])


# --- the CLI ---------------------------------------------------------------------------------


def _own_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    parser = argparse.ArgumentParser(prog="obsbus", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    simcam_cli.add_commands(sub, common)
    return parser


def test_cli_add_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _own_parser().parse_args(
        ["simcam", "generate", str(tmp_path), "--exposures", "2", "--start", START, "--json"]
    )
    assert args.func(args) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert [r["exposure_id"] for r in rows] == [2024112500001, 2024112500002]
    assert [r["img_type"] for r in rows] == ["BIAS", "DARK"]
    assert all(r["files"] == 205 for r in rows)
    assert len(list(tmp_path.rglob("*.fits"))) == 410


def test_cli_via_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.main import build_parser, main

    try:
        build_parser().parse_args(["simcam", "generate", str(tmp_path), "--exposures", "1"])
    except SystemExit:
        pytest.skip("services/cli/main.py does not add the simcam commands yet")
    capsys.readouterr()
    assert main(["simcam", "generate", str(tmp_path), "--exposures", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["obs_id"] == "SC_O_20241125_000001" and row["files"] == 205
    assert main(["simcam", "generate", str(tmp_path), "--exposures", "0"]) == 1
    assert "--exposures must be between 1 and 99999" in capsys.readouterr().err
