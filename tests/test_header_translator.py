"""Translating an exposure's headers once: the same answers as translating every file in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from astro_metadata_translator import MetadataTranslator, ObservationInfo

from services.fits.cards import parse_cards
from services.fits.hdus import read_hdus
from services.ingest.headers import (
    USED_PROPERTIES,
    CardSignature,
    HeaderTranslator,
    configure_offline_translation,
)
from services.ingest.observation import exposure_records
from services.ingest.raws import prepare
from services.instruments.simcam.generator import ExposureSpec, write_exposure
from tests.support import headers as hdrs

HSC = "fitsheader-hsc.yaml"  # detector 50, exposure 904024


def full_translation(path: Path) -> ObservationInfo:
    """What ingest used to do for every file: translate its whole header."""
    header = read_hdus(path)[0].header
    return ObservationInfo(header, pedantic=False, subset=set(USED_PROPERTIES))


def assert_same_as_full(path: Path, translator: HeaderTranslator) -> None:
    prepared = prepare(path, translator)
    info = full_translation(path)
    expected = exposure_records(str(info.instrument), info)
    assert prepared.exposure == expected.exposure
    assert (prepared.day_obs, prepared.group, prepared.visit) == (
        expected.day_obs,
        expected.group,
        expected.visit,
    )
    (dataset,) = prepared.datasets
    assert dataset.detector == info.detector_num
    assert dataset.serial == info.detector_serial


def test_simcam_exposure_is_translated_once(tmp_path: Path) -> None:
    configure_offline_translation()
    detectors = [0, 1, 94, 95, 189, 197, 204]
    science = write_exposure(tmp_path / "a", 7, "2024-11-25T02:00:00", detectors=detectors)
    flat = write_exposure(
        tmp_path / "b",
        8,
        "2024-11-25T02:01:00",
        ExposureSpec("FLAT", exposure_time=5.0),
        detectors=detectors,
    )
    translator = HeaderTranslator()
    for path in [*science, *flat]:
        assert_same_as_full(path, translator)
    assert translator.full_translations == 2
    # Coming back to the first exposure finds it still remembered.
    assert_same_as_full(science[0], translator)
    assert translator.full_translations == 2


def test_real_hsc_headers_of_one_exposure(tmp_path: Path) -> None:
    first = hdrs.write_single(HSC, tmp_path / "det50.fits")
    second = hdrs.write_single(HSC, tmp_path / "det51.fits", **{"DET-ID": 51, "T_CCDSN": "121"})
    translator = HeaderTranslator()
    assert_same_as_full(first, translator)
    assert_same_as_full(second, translator)
    assert translator.full_translations == 1
    assert [d.detector for d in prepare(second, translator).datasets] == [51]


def test_a_differing_exposure_card_is_translated_again(tmp_path: Path) -> None:
    first = hdrs.write_single(HSC, tmp_path / "det50.fits")
    other = hdrs.write_single(HSC, tmp_path / "det51.fits", **{"DET-ID": 51, "EXPTIME": 31.0})
    translator = HeaderTranslator()
    prepare(first, translator)
    assert prepare(other, translator).exposure["exposure_time"] == 31.0
    assert translator.full_translations == 2


def test_header_corrections_apply_before_the_comparison(tmp_path: Path) -> None:
    # astro_metadata_translator ships a correction for HSCA00124400: DATA-TYP is OBJECT.
    wrong = {"EXP-ID": "HSCA00124400", "DATA-TYP": "BIAS"}
    first = hdrs.write_single(HSC, tmp_path / "det50.fits", **wrong)
    second = hdrs.write_single(HSC, tmp_path / "det51.fits", **wrong, **{"DET-ID": 51})
    translator = HeaderTranslator()
    for path in (first, second):
        prepared = prepare(path, translator)
        assert prepared.exposure["observation_type"] == "science"
        assert_same_as_full(path, translator)


def test_decam_ccds_of_one_file(tmp_path: Path) -> None:
    ccds = [{"CCDNUM": 25, "DETPOS": "N4"}, {"CCDNUM": 26, "DETPOS": "N5"}]
    path = hdrs.write_mef("fitsheader-decam.yaml", tmp_path / "decam.fits", ccds)
    translator = HeaderTranslator()
    prepared = prepare(path, translator)
    assert [(d.detector, d.locator) for d in prepared.datasets] == [(25, "hdu=1"), (26, "hdu=2")]
    reference = hdrs.translate_dump("fitsheader-decam.yaml")
    assert prepared.exposure["id"] == reference.exposure_id


def test_the_translator_is_chosen_once_per_kind_of_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_offline_translation()
    asked: list[str] = []
    determine = MetadataTranslator.determine_translator.__func__  # type: ignore[attr-defined]

    def counting(cls: type[MetadataTranslator], header: Any, filename: Any = None) -> Any:
        chosen = determine(cls, header, filename=filename)
        asked.append(chosen.name)
        return chosen

    monkeypatch.setattr(MetadataTranslator, "determine_translator", classmethod(counting))
    simcam = write_exposure(tmp_path / "a", 7, "2024-11-25T02:00:00", detectors=[0, 1, 2])
    hsc = hdrs.write_single(HSC, tmp_path / "hsc.fits")
    decam = hdrs.write_mef("fitsheader-decam.yaml", tmp_path / "decam.fits", [{"CCDNUM": 25}])
    translator = HeaderTranslator()
    names = [
        prepare(path, translator).instrument.name
        for path in [simcam[0], hsc, simcam[1], decam, simcam[2], hsc]
    ]
    assert names == ["SimCam", "HSC", "SimCam", "DECam", "SimCam", "HSC"]
    assert sorted(asked) == ["DECam", "HSC", "SimCam"]  # each kind asked once


def _with_card(path: Path, card: str) -> Path:
    """The file with one more primary-header card (written as is: astropy could not)."""
    data = bytearray(path.read_bytes())
    end = data.index(b"END" + b" " * 77)
    assert end % 2880 + 160 <= 2880, "no room left in the header block"
    data[end : end + 160] = (card.ljust(80) + "END").ljust(160).encode()
    path.write_bytes(bytes(data))
    return path


def test_a_card_no_translator_reads_may_be_unreadable(tmp_path: Path) -> None:
    path = _with_card(hdrs.write_single(HSC, tmp_path / "det50.fits"), "SKYLEVEL= NAN")
    prepared = prepare(path, HeaderTranslator())
    assert [d.detector for d in prepared.datasets] == [50]


def test_a_signature_tells_apart_what_its_cards_say_differently() -> None:
    def header(obj_tail: str, dpr: str) -> tuple[Any, Any]:
        return parse_cards(
            "OBJECT  = 'a target with a long name that goes on and on and on and on &'".ljust(80)
            + f"CONTINUE  '{obj_tail}'".ljust(80)
            + f"HIERARCH ESO DPR TYPE = '{dpr}'".ljust(80)
        )

    one = header("A", "OBJECT")
    cards = ["OBJECT", "HIERARCH ESO DPR TYPE"]  # as a translator may spell them
    signature = CardSignature.of(cards, *one)
    assert signature.matches(*header("A", "OBJECT"))
    assert not signature.matches(*header("B", "OBJECT"))  # differs after the first card
    assert not signature.matches(*header("A", "FLAT"))
