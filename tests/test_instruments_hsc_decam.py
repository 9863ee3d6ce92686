"""The HSC and DECam instruments: their tables against real headers and the translators,
the HSC corner-CCD formatter, and how DECam multi-extension raws are split per CCD."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astro_metadata_translator import DecamTranslator, HscTranslator, ObservationInfo
from astro_metadata_translator.tests import read_test_file
from astropy.io import fits
from astropy.utils import iers

from services.core.errors import UnknownDetectorError
from services.datastore.formatters import formatter_import_path, load_formatter
from services.fits.hdus import read_hdus
from services.ingest.raws import RawIngester
from services.instruments import Instrument, load_instrument
from services.instruments.decam import DarkEnergyCamera, DecamRawFormatter
from services.instruments.hsc import (
    HscCornerRawFormatter,
    HscRawFormatter,
    HyperSuprimeCam,
)
from tests.support import headers as hdrs

iers.conf.auto_download = False  # no network in tests

HEADERS = hdrs.header_dir()
REAL_HEADERS = [
    "fitsheader-hsc.yaml",
    "fitsheader-hsc-HSCA04090107.yaml",
    "fitsheader-decam.yaml",
    "fitsheader-decam-0160496.yaml",
    "fitsheader-decam-raw_dec050441_25.yaml",
]
# Cards of one DECam CCD, which a real raw keeps in that CCD's extension, not the primary.
DECAM_CCD_CARDS = ("CCDNUM", "DETPOS", "DETECTOR", "EXTNAME")


def real_header(name: str) -> dict[str, Any]:
    return dict(read_test_file(name, dir=str(HEADERS)))


def translate(header: Any) -> ObservationInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ObservationInfo(header, pedantic=False)


def by_purpose(instrument: type[Instrument]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for det in instrument.detectors:
        out.setdefault(det.purpose, []).append(det.id)
    return out


# --- the tables ---------------------------------------------------------------------------------


def test_entry_points_load_both_instruments() -> None:
    assert load_instrument("HSC") is HyperSuprimeCam
    assert load_instrument("DECam") is DarkEnergyCamera
    assert load_instrument(HyperSuprimeCam.class_path()) is HyperSuprimeCam


@pytest.mark.parametrize("instrument", [HyperSuprimeCam, DarkEnergyCamera])
def test_names_serials_and_filters_are_unique(instrument: type[Instrument]) -> None:
    dets = instrument.detectors
    assert len({d.id for d in dets}) == len(dets)
    assert len({d.full_name for d in dets}) == len(dets)
    known = [d.serial for d in dets if d.serial is not None]
    assert len(set(known)) == len(known)
    physical = [f.physical_filter for f in instrument.filters]
    assert len(set(physical)) == len(physical)


def test_hsc_detectors() -> None:
    purposes = by_purpose(HyperSuprimeCam)
    assert purposes == {"science": list(range(104)), "focus": list(range(104, 112))}
    assert HyperSuprimeCam.detector(50).serial == "120"
    assert HyperSuprimeCam.detector(37).serial == "061"
    assert HyperSuprimeCam.detector(0).serial is None  # unknown until a raw names it
    assert HyperSuprimeCam.detector(0).full_name == "1_53"
    assert HyperSuprimeCam.records()["instrument"][0]["detector_max"] == 112


def test_hsc_names_are_the_translators_for_every_detector() -> None:
    header = real_header("fitsheader-hsc.yaml")
    for det in HyperSuprimeCam.detectors:
        translator = HscTranslator({**header, "DET-ID": det.id})
        assert translator.to_detector_unique_name() == det.full_name, det.id


def test_hsc_filters() -> None:
    bands = {f.physical_filter: f.band for f in HyperSuprimeCam.filters}
    assert len(bands) == 32
    assert {bands[f"HSC-{b}"] for b in "GRIZY"} == set("grizy")
    assert bands["HSC-R2"] == "r" and bands["HSC-I2"] == "i"
    assert (bands["NB0921"], bands["NB1010"], bands["IB0945"]) == ("N921", "N1010", "I945")
    # What HscTranslator makes of FILTER01 "NONE" (darks, biases) and of an unreadable one.
    assert (bands["empty"], bands["unknown"]) == ("white", "unknown")


def test_decam_detectors() -> None:
    purposes = by_purpose(DarkEnergyCamera)
    assert purposes["science"] == list(range(1, 63))
    assert len(purposes["focus"]) == 8 and len(purposes["guider"]) == 4
    names = {d.full_name for d in DarkEnergyCamera.detectors}
    assert {f"S{i}" for i in range(1, 32)} | {f"N{i}" for i in range(1, 32)} < names
    assert {"FS1", "FS2", "FS3", "FS4", "FN1", "FN2", "FN3", "FN4"} < names
    assert {"GS1", "GS2", "GN1", "GN2"} < names
    assert DarkEnergyCamera.detector(25).serial == "S3-111_107419-8-3"
    assert DarkEnergyCamera.detector(72).full_name == "FS1"


def test_decam_names_are_the_translators() -> None:
    table = DecamTranslator.detector_names  # CCDNUM -> DETPOS; it leaves out 61 (N30)
    for det in DarkEnergyCamera.detectors:
        if det.id in table:
            assert table[det.id] == det.full_name, det.id
    assert DarkEnergyCamera.detector(61).full_name == "N30"


def test_decam_filters() -> None:
    bands = {f.physical_filter: f.band for f in DarkEnergyCamera.filters}
    assert set(bands.values()) == {
        *"ugriz",
        "y",
        "VR",
        "N964",
        "N708",
        "N419",
        "N540",
        "opaque",
    }
    assert bands["solid plate 0.0 0.0"] == "opaque"
    assert bands["Y DECam c0005 10095.0 1130.0"] == "y"


# --- real headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_HEADERS)
def test_real_headers_translate_to_defined_detectors_and_filters(name: str) -> None:
    info = translate(real_header(name))
    instrument = load_instrument(str(info.instrument))
    assert instrument in (HyperSuprimeCam, DarkEnergyCamera)
    assert info.detector_num is not None and info.exposure_id is not None
    det = instrument.detector(info.detector_num)
    assert det.full_name == info.detector_unique_name
    assert det.serial == info.detector_serial
    assert info.physical_filter in {f.physical_filter for f in instrument.filters}
    assert 0 <= info.exposure_id < instrument.exposure_max


def test_real_header_values() -> None:
    hsc = translate(real_header("fitsheader-hsc.yaml"))
    assert (hsc.detector_num, hsc.detector_serial, hsc.physical_filter) == (50, "120", "HSC-I")
    zero = translate(real_header("fitsheader-decam-0160496.yaml"))
    assert (zero.observation_type, zero.physical_filter) == ("zero", "solid plate 0.0 0.0")


# --- HSC raw formatters -------------------------------------------------------------------------


def test_hsc_raw_formatter_by_detector() -> None:
    for det in HyperSuprimeCam.detectors:
        formatter = HyperSuprimeCam.raw_formatter({"instrument": "HSC", "detector": det.id})
        corner = det.id in (100, 101, 102, 103)
        assert formatter is (HscCornerRawFormatter if corner else HscRawFormatter)
        assert load_formatter(formatter_import_path(formatter)) is formatter


def test_hsc_corner_formatter_turns_pixels_half_a_turn(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.int32).reshape(3, 4)  # no symmetry to hide a mistake
    path = tmp_path / "raw.fits"
    fits.PrimaryHDU(data=pixels).writeto(path)

    plain = HscRawFormatter().read(path)
    corner = HscCornerRawFormatter().read(path)

    np.testing.assert_array_equal(plain, pixels)
    np.testing.assert_array_equal(corner, pixels[::-1, ::-1])
    assert corner[0, 0] == 11 and corner[2, 3] == 0
    header = HscCornerRawFormatter().read(path, component="header")
    assert (header["NAXIS1"], header["NAXIS2"]) == (4, 3)  # components are not turned


# --- DECam multi-extension raws -----------------------------------------------------------------


def fits_header(cards: dict[str, Any]) -> fits.Header:
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long keywords become HIERARCH cards
        for key, value in cards.items():
            header[key] = value
    return header


def write_decam_mef(path: Path, ccdnums: list[int]) -> list[np.ndarray]:
    """A DECam raw: the real primary header, then one small image extension per CCD."""
    real = real_header("fitsheader-decam.yaml")
    primary = fits_header({k: v for k, v in real.items() if k not in DECAM_CCD_CARDS})
    hdus: list[Any] = [fits.PrimaryHDU(header=primary)]
    images = []
    for i, ccdnum in enumerate(ccdnums):
        det = DarkEnergyCamera.detector(ccdnum) if ccdnum < 100 else None
        cards: dict[str, Any] = {"CCDNUM": ccdnum, "INHERIT": True}
        if det is not None:
            cards |= {"DETPOS": det.full_name, "DETECTOR": det.serial, "EXTNAME": det.full_name}
        image = np.full((2, 3), i, dtype=np.int16)
        images.append(image)
        hdus.append(fits.ImageHDU(data=image, header=fits_header(cards)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList(hdus).writeto(path)
    return images


def test_decam_raw_headers_one_merged_header_per_ccd(tmp_path: Path) -> None:
    path = tmp_path / "DECam_00229388.fits"
    images = write_decam_mef(path, [25, 26, 61])
    headers = DarkEnergyCamera.raw_headers(path, read_hdus(path))

    assert [locator for locator, _ in headers] == ["hdu=1", "hdu=2", "hdu=3"]
    for (locator, header), ccdnum, image in zip(headers, [25, 26, 61], images, strict=True):
        det = DarkEnergyCamera.detector(ccdnum)
        assert header["CCDNUM"] == ccdnum
        assert header["EXPNUM"] == 229388  # from the primary
        info = translate(header)
        assert (info.instrument, info.detector_num) == ("DECam", ccdnum)
        assert info.detector_unique_name == det.full_name
        assert info.detector_serial == det.serial
        assert info.physical_filter == "z DECam SDSS c0004 9260.0 1520.0"
        assert DarkEnergyCamera.raw_formatter({"detector": ccdnum}) is DecamRawFormatter
        np.testing.assert_array_equal(DecamRawFormatter(locator).read(path), image)


def test_decam_raw_headers_skip_unknown_ccds(tmp_path: Path) -> None:
    path = tmp_path / "mixed.fits"
    write_decam_mef(path, [999, 72])  # an unknown CCDNUM, then focus CCD FS1
    headers = DarkEnergyCamera.raw_headers(path, read_hdus(path))
    assert [(loc, h["DETPOS"]) for loc, h in headers] == [("hdu=2", "FS1")]

    empty = tmp_path / "none.fits"
    write_decam_mef(empty, [999])
    with pytest.raises(UnknownDetectorError, match="no image HDU"):
        DarkEnergyCamera.raw_headers(empty, read_hdus(empty))


# --- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize("instrument", [HyperSuprimeCam, DarkEnergyCamera])
def test_register_is_idempotent(empty_butler: Any, instrument: type[Instrument]) -> None:
    first = instrument.register(empty_butler.registry)
    assert first["detector"] == len(instrument.detectors)
    assert first["physical_filter"] == len(instrument.filters)
    again = instrument.register(empty_butler.registry)
    assert set(again.values()) == {0}


def test_ingest_splits_a_decam_raw_per_ccd(empty_butler: Any, tmp_path: Path) -> None:
    DarkEnergyCamera.register(empty_butler.registry)
    path = tmp_path / "DECam_00229388.fits"
    images = write_decam_mef(path, [25, 26, 61])
    (outcome,) = RawIngester(empty_butler).ingest([path])

    assert (outcome.status, outcome.detectors, outcome.swaps) == ("ingested", (25, 26, 61), ())
    for dataset_id, image in zip(outcome.dataset_ids, images, strict=True):
        np.testing.assert_array_equal(empty_butler.get(uuid.UUID(dataset_id)), image)
