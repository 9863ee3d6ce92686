"""Reading a FITS file's structure: the same headers and data extents astropy finds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from services.core.errors import NotFitsError, TruncatedFileError
from services.ingest.fitsfile import BLOCK, read_hdus
from tests.support import headers as hdrs


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
            assert list(hdu.header.items()) == list(astropy_hdu.header.items())
    assert [h.holds_image for h in mine] == [False, True, False, True]
    assert mine[0].images["EXPTIME"].startswith("EXPTIME =")
    assert mine[0].images["OBSERVER"][10:].strip().startswith("'someone")


def test_real_header_round_trips(tmp_path: Path) -> None:
    path = hdrs.write_single("fitsheader-hsc.yaml", tmp_path / "hsc.fits")
    (hdu,) = read_hdus(path)
    assert hdu.header == fits.getheader(path)
    with fits.open(path) as theirs:
        assert hdu.data_size == theirs[0].data.nbytes
    assert hdu.holds_image


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
