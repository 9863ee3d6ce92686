"""The structure of a FITS file: its HDUs' headers and where their data lie, nothing else.

Ingest needs every header and the certainty that the file is complete, not the pixels.
Reading the 2880-byte header blocks directly, parsing their cards into plain mappings
(``cards.py``) and computing each HDU's data size from its header (the FITS standard's
formula) is several times cheaper than ``astropy.io.fits.open``, which builds HDU objects
and, for the size check, re-serialises every header.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..core.errors import NotFitsError, TruncatedFileError
from .cards import FitsHeader, parse_cards

BLOCK = 2880
CARD = 80
_SIGNATURE = b"SIMPLE  ="
_END = b"END" + b" " * (CARD - 3)


@dataclass(frozen=True)
class Hdu:
    """One header-data unit: its parsed header and the byte range of its data."""

    index: int
    header: FitsHeader
    data_offset: int
    data_size: int  # without the padding to a whole block
    # Each keyword's card as written (80 characters; the first card of a repeated keyword).
    # Comparing these is much cheaper than comparing parsed values.
    images: Mapping[str, str]

    @property
    def holds_image(self) -> bool:
        """An image with pixels: a primary or IMAGE extension, or a tile-compressed image."""
        header = self.header
        if header.get("XTENSION", "IMAGE") == "BINTABLE" and header.get("ZIMAGE", False):
            return int(header.get("ZNAXIS", 0)) > 0
        return header.get("XTENSION", "IMAGE") == "IMAGE" and int(header.get("NAXIS", 0)) > 0


def read_hdus(path: Path) -> list[Hdu]:
    """Every HDU's header in a FITS file, refusing non-FITS, truncated and damaged files."""
    try:
        size = os.path.getsize(path)
        with path.open("rb") as f:
            if f.read(len(_SIGNATURE)) != _SIGNATURE:
                raise NotFitsError(f"{path}: not a FITS file (it does not start with SIMPLE)")
            f.seek(0)
            return _read_all(path, f, size)
    except OSError as err:
        raise NotFitsError(f"{path}: cannot read the file ({err.strerror})") from None


def _read_all(path: Path, f: BinaryIO, size: int) -> list[Hdu]:
    hdus: list[Hdu] = []
    offset = 0
    while offset < size:
        if hdus and not _starts_extension(f, offset):
            break  # trailing bytes that are not an extension are ignored, as astropy does
        text, data_offset = _read_header(path, f, offset, size, len(hdus))
        header, images = _parse(text)
        data_size = _data_size(path, header, len(hdus))
        # The standard pads data to whole blocks: a file cut inside the padding is incomplete
        # too (and may still be being written).
        needed = data_offset + _padded(data_size)
        if needed > size:
            raise TruncatedFileError(
                f"{path}: truncated: HDU {len(hdus)} needs {needed} bytes, the file has {size}"
            )
        hdus.append(Hdu(len(hdus), header, data_offset, data_size, images))
        offset = data_offset + _padded(data_size)
    return hdus


def _starts_extension(f: BinaryIO, offset: int) -> bool:
    f.seek(offset)
    return f.read(8) == b"XTENSION"


def _read_header(path: Path, f: BinaryIO, offset: int, size: int, index: int) -> tuple[str, int]:
    """The text of the header starting at ``offset`` (up to END) and where its data begin."""
    f.seek(offset)
    blocks = bytearray()
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise TruncatedFileError(
                f"{path}: truncated: the header of HDU {index} has no END card "
                f"(the file ends at byte {size})"
            )
        blocks += block
        end = _end_card(block)
        if end is not None:
            break
    try:
        text = bytes(blocks[: len(blocks) - BLOCK + end]).decode("ascii")
    except UnicodeDecodeError as err:
        raise TruncatedFileError(f"{path}: damaged FITS header in HDU {index} ({err})") from None
    return text, offset + len(blocks)


def _parse(text: str) -> tuple[FitsHeader, dict[str, str]]:
    # A card no parser can read fails only when read (see cards.py); a damaged layout card
    # (BITPIX, NAXISn, ...) fails below, in _data_size.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-standard cards are the translator's business
        return parse_cards(text)


def _end_card(block: bytes) -> int | None:
    for start in range(0, BLOCK, CARD):
        if block[start : start + CARD] == _END:
            return start
    return None


def _data_size(path: Path, header: FitsHeader, index: int) -> int:
    """Bytes of data after a header: |BITPIX|/8 × GCOUNT × (PCOUNT + NAXIS1 × ... × NAXISn)."""
    try:
        naxis = int(header.get("NAXIS", 0))
        if naxis == 0:
            return 0
        axes: Sequence[int] = [int(header[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        if header.get("GROUPS", False) and axes[0] == 0:  # random groups: NAXIS1 is 0
            axes = axes[1:]
        bits = abs(int(header["BITPIX"]))
        return (
            bits
            // 8
            * int(header.get("GCOUNT", 1))
            * (int(header.get("PCOUNT", 0)) + math.prod(axes))
        )
    except (KeyError, ValueError, TypeError) as err:
        raise TruncatedFileError(
            f"{path}: damaged FITS header in HDU {index} (its data size is unknown: {err})"
        ) from None


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
