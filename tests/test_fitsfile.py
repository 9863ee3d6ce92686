"""Reading a FITS file's structure: the same headers and data extents astropy finds."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from services.core.errors import NotFitsError, TruncatedFileError, UnreadableCardError
from services.fits.cards import COMMENTARY, parse_cards
from services.fits.hdus import BLOCK, read_hdus
from services.instruments.simcam.generator import write_exposure
from tests.support import headers as hdrs


def assert_same_values(mine: Mapping[str, Any], theirs: fits.Header) -> None:
    """Every valued keyword astropy reads, with the same value and type, and no other.

    Keywords are upper case (astropy keeps a non-standard lower-case one as written; both
    answer a look-up in either case)."""
    keywords = {k for k in theirs if k not in COMMENTARY}
    assert set(mine) == {k.upper() for k in keywords}
    for keyword in keywords:
        expected = theirs[keyword]
        assert type(mine[keyword]) is type(expected), keyword
        assert mine[keyword] == expected, keyword


def _write(path: Path, *hdus: fits.hdu.base.ExtensionHDU | fits.PrimaryHDU) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList(list(hdus)).writeto(path)
    return path


def _mef(path: Path) -> Path:
    primary = fits.PrimaryHDU(header=fits.Header([("OBSERVER", "someone"), ("EXPTIME", 30.0)]))
    image = fits.ImageHDU(np.arange(12, dtype=np.int16).reshape(3, 4), name="CCD1")
    table = fits.BinTableHDU.from_columns(
        [fits.Column("x", "E", array=np.arange(5.0)), fits.Column("s", "10A", array=["a"] * 5)],
        name="TABLE",
    )
    compressed = fits.CompImageHDU(np.ones((40, 30), dtype=np.float32), name="COMP")
    return _write(path, primary, image, table, compressed)


def test_headers_and_extents_match_astropy(tmp_path: Path) -> None:
    path = _mef(tmp_path / "mef.fits")
    mine = read_hdus(path)
    with fits.open(path, disable_image_compression=True) as theirs:
        assert len(mine) == len(theirs) == 4
        for hdu, astropy_hdu in zip(mine, theirs, strict=True):
            info = theirs.fileinfo(hdu.index)
            assert hdu.data_offset == info["datLoc"]
            # astropy reports the span with the padding to whole blocks
            assert hdu.data_size <= info["datSpan"] < hdu.data_size + BLOCK
            assert_same_values(hdu.header, astropy_hdu.header)
    assert [h.holds_image for h in mine] == [False, True, False, True]
    assert mine[0].images["EXPTIME"].startswith("EXPTIME =")
    assert mine[0].images["OBSERVER"][10:].strip().startswith("'someone")


def test_real_header_round_trips(tmp_path: Path) -> None:
    path = hdrs.write_single("fitsheader-hsc.yaml", tmp_path / "hsc.fits")
    (hdu,) = read_hdus(path)
    assert_same_values(hdu.header, fits.getheader(path))
    with fits.open(path) as theirs:
        assert hdu.data_size == theirs[0].data.nbytes
    assert hdu.holds_image


@pytest.mark.parametrize("name", sorted(p.name for p in hdrs.header_dir().glob("*.yaml")))
def test_every_real_header_reads_as_astropy_reads_it(tmp_path: Path, name: str) -> None:
    path = hdrs.write_single(name, tmp_path / "raw.fits")
    (hdu,) = read_hdus(path)
    assert_same_values(hdu.header, fits.getheader(path))


def test_simcam_headers_read_as_astropy_reads_them(tmp_path: Path) -> None:
    paths = write_exposure(tmp_path, 1, "2024-11-25T02:00:00", detectors=(0, 100, 200))
    for path in paths:
        with fits.open(path) as theirs:
            for hdu, astropy_hdu in zip(read_hdus(path), theirs, strict=True):
                assert_same_values(hdu.header, astropy_hdu.header)


def test_unusual_cards_read_as_astropy_reads_them() -> None:
    cards = [
        fits.Card("LONGSTR", "x" * 150 + " end", "long strings continue"),
        fits.Card("QUOTES", "it's 'quoted'  "),
        fits.Card("LEADING", "  spaced"),
        fits.Card("AMPER", "ends with &"),
        fits.Card("EMPTYSTR", ""),
        fits.Card("UNDEF", fits.card.UNDEFINED),
        fits.Card("CPLX", complex(1.5, -2)),
        fits.Card("BIG", 12345678901234567890),
        fits.Card("NEG", -7),
        fits.Card("REAL", 1.5e-300),
        fits.Card("FLAG", False),
        fits.Card("HIERARCH ESO DET CHIP NAME", "ccd7"),
        fits.Card("COMMENT", "not a value"),
        fits.Card("HISTORY", "nor this"),
        fits.Card("REPEAT", 1),
        fits.Card("REPEAT", 2),
    ]
    text = "".join(c.image for c in cards)
    text += "DEXP    =               1.5D+03 / Fortran's exponent".ljust(80)
    text += "LOWER   = 'x'".ljust(80)
    text += "EARLY= 5".ljust(80)  # "=" before column 9: not standard, astropy reads it
    text += "HIERARCH ESO OBS NAME = 'a long &'".ljust(80)  # HIERARCH strings continue too
    text += "CONTINUE  'hierarch value'".ljust(80)
    text += "BLANKAMP= 'abc &  '".ljust(80)  # blanks after the "&" still continue
    text += "CONTINUE  'd'".ljust(80)
    text += "LONEAMP = 'no continue &'".ljust(80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fits.Header.fromstring(text)
    mine, images = parse_cards(text)
    assert_same_values(mine, theirs)
    assert mine["REPEAT"] == 1 and images["REPEAT"].startswith("REPEAT  =")
    assert mine["HIERARCH ESO DET CHIP NAME"] == mine["eso det chip name"] == "ccd7"
    assert "longstr" in mine and mine.get("ABSENT", 0) == 0
    assert mine["ESO OBS NAME"] == "a long hierarch value" and mine["BLANKAMP"] == "abc d"
    assert "LONGSTR" not in images  # its first card is not all of its value


def test_a_card_nothing_can_read_fails_only_when_read() -> None:
    text = "EXPTIME =                 30.0".ljust(80) + "SKYLEVEL= NAN".ljust(80)
    header, _ = parse_cards(text)
    assert header["EXPTIME"] == 30.0 and "SKYLEVEL" in header
    with pytest.raises(UnreadableCardError, match=r"^header card SKYLEVEL cannot be read"):
        header.get("SKYLEVEL")
    assert header.merged({}).unreadable == {"SKYLEVEL": "SKYLEVEL= NAN".ljust(80)}


def test_not_fits(tmp_path: Path) -> None:
    (tmp_path / "notes.fits").write_text("hello")
    with pytest.raises(NotFitsError, match="not a FITS file"):
        read_hdus(tmp_path / "notes.fits")
    with pytest.raises(NotFitsError, match="cannot read"):
        read_hdus(tmp_path / "missing.fits")


@pytest.mark.parametrize(
    ("cut", "problem"),
    [
        (lambda size: 100, "no END card"),  # inside the primary header
        (lambda size: size - 1, "needs"),  # inside the last HDU's padding
        (lambda size: size - BLOCK - 10, "needs"),  # inside the last HDU's data
        (lambda size: BLOCK + 80, "no END card"),  # inside the first extension's header
    ],
)
def test_truncated(tmp_path: Path, cut: object, problem: str) -> None:
    path = _mef(tmp_path / "mef.fits")
    data = path.read_bytes()
    assert callable(cut)
    path.write_bytes(data[: cut(len(data))])
    with pytest.raises(TruncatedFileError, match=problem):
        read_hdus(path)


def test_trailing_bytes_are_ignored(tmp_path: Path) -> None:
    path = _mef(tmp_path / "mef.fits")
    with path.open("ab") as f:
        f.write(b"\0" * BLOCK)
    assert len(read_hdus(path)) == 4


def test_damaged_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.fits", fits.PrimaryHDU(np.zeros((2, 2), dtype=np.int16)))
    data = bytearray(path.read_bytes())
    data[80 * 1 + 10 : 80 * 1 + 30] = b"'not a number'      "  # BITPIX's value
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedFileError, match="damaged FITS header in HDU 0"):
        read_hdus(path)
