"""Translating raw files' headers, without touching the repository.

The translator is chosen from the primary header by astro_metadata_translator, and the
Instrument of that name says which headers (one per detector) to translate.

An exposure's 205 files say the same about the exposure and differ only in the detector, so
``HeaderTranslator`` translates the exposure-level properties once per exposure: it keeps the
header cards the translator read for them (``MetadataTranslator.cards_used``) with their
values, and a later header with the same values for those cards has, by construction, the
same translation. A file whose exposure cards differ (a conflicting header) is translated in
full, and the conflict is found when its records are compared.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astro_metadata_translator import MetadataTranslator, ObservationInfo, fix_header
from astropy.utils import iers

from ..core.errors import IncompleteHeaderError, NoTranslatorError
from ..fits.cards import FitsHeader, normal_keyword
from ..fits.hdus import Hdu
from ..instruments import Instrument, available, load_instrument
from .observation import ExposureRecords, exposure_records

# What ingest cannot do without: a translation missing any of these is "incomplete_header".
REQUIRED_PROPERTIES = (
    "instrument",
    "exposure_id",
    "observation_id",
    "datetime_begin",
    "datetime_end",
    "physical_filter",
    "detector_num",
    "observation_type",
    "exposure_time",
)
# Everything else ingest reads from a translation (exposure and visit records, installations).
USED_PROPERTIES = frozenset(
    {
        *REQUIRED_PROPERTIES,
        "observing_day",
        "observing_day_offset",
        "exposure_group",
        "dark_time",
        "observation_reason",
        "observation_counter",
        "science_program",
        "object",
        "tracking_radec",
        "altaz_begin",
        "boresight_rotation_angle",
        "detector_serial",
    }
)
# What differs between the files of one exposure; everything else is the exposure's.
DETECTOR_PROPERTIES = frozenset({"detector_num", "detector_serial"})
EXPOSURE_PROPERTIES = USED_PROPERTIES - DETECTOR_PROPERTIES


def configure_offline_translation() -> None:
    """Translate headers without the network and without per-property log noise.

    astropy would otherwise try to download IERS tables for alt/az conversions; the bundled
    astropy-iers-data tables are used instead. Missing properties are reported by ingest as
    one "incomplete_header" reason, so the translator's own warnings are silenced.
    """
    iers.conf.auto_download = False
    iers.conf.iers_degraded_accuracy = "warn"
    logging.getLogger("astro_metadata_translator").setLevel(logging.ERROR)
    for name in available():  # importing an instrument registers its translator
        load_instrument(name)


@dataclass(frozen=True)
class CardSignature:
    """Some header cards and what one header said for them (absent ones included).

    A translator's answer depends only on the cards it read, so another header saying the
    same for those cards gets the same answer.
    """

    cards: tuple[str, ...]
    values: tuple[Any, ...]
    # The cards as written, where known (a file's own header, a card not continued): the same
    # text is the same value, and comparing text is much cheaper than parsing values.
    images: tuple[str | None, ...]

    @classmethod
    def of(
        cls, cards: Iterable[str], header: Mapping[str, Any], images: Mapping[str, str] | None
    ) -> CardSignature:
        cards = tuple(sorted(cards))
        return cls(
            cards,
            tuple(header.get(c, _ABSENT) for c in cards),
            tuple(_image(images, c) for c in cards),
        )

    def matches(self, header: Mapping[str, Any], images: Mapping[str, str] | None) -> bool:
        for card, value, image in zip(self.cards, self.values, self.images, strict=True):
            if image is not None and image == _image(images, card):
                continue
            if header.get(card, _ABSENT) != value:  # written differently may still be equal
                return False
        return True


def _image(images: Mapping[str, str] | None, card: str) -> str | None:
    return None if images is None else images.get(normal_keyword(card))


@dataclass(frozen=True)
class ExposureTranslation:
    """The exposure-level properties of a header, and the header cards they came from."""

    translator: type[MetadataTranslator]
    info: ObservationInfo
    signature: CardSignature

    def matches(
        self,
        translator: type[MetadataTranslator],
        header: Mapping[str, Any],
        images: Mapping[str, str] | None,
    ) -> bool:
        """Whether ``header`` gives the same values for every card this translation read."""
        return translator is self.translator and self.signature.matches(header, images)

    @functools.cached_property
    def records(self) -> ExposureRecords:
        """The exposure's dimension records (built once, shared by its files)."""
        return exposure_records(str(self.translator.name), self.info)


_ABSENT = object()


@dataclass(frozen=True)
class TranslatedHeader:
    """One detector's translated header, and where in the file its pixels are."""

    locator: str | None
    exposure: ExposureTranslation
    detector_num: int
    detector_serial: str | None


def _choose(
    path: Path, primary: Mapping[str, Any]
) -> tuple[type[MetadataTranslator], frozenset[str] | None]:
    """The translator, and the cards the translators' ``can_translate`` read to choose it
    (None when one looked at the whole header)."""
    reading = _ReadCards(primary)
    try:
        translator: type[MetadataTranslator] = MetadataTranslator.determine_translator(
            reading, filename=str(path)
        )
    except ValueError:
        raise NoTranslatorError(
            f"{path}: no header translator recognises this file (instrument "
            f"{primary.get('INSTRUME', 'unknown')!r})"
        ) from None
    return translator, None if reading.whole else frozenset(reading.read)


class _ReadCards(Mapping[str, Any]):
    """A header that notes which cards are read."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self._header = header
        self.read: set[str] = set()
        self.whole = False

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self._header[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._header

    def __iter__(self) -> Iterator[str]:
        self.whole = True
        return iter(self._header)

    def __len__(self) -> int:
        self.whole = True
        return len(self._header)


class HeaderTranslator:
    """Translates raw headers; exposure-level properties once per exposure (see above).

    One per ingest session or worker; it remembers the last ``recent`` exposures.
    """

    def __init__(self, recent: int = 8) -> None:
        self._recent: deque[ExposureTranslation] = deque(maxlen=recent)
        self._choices: deque[tuple[CardSignature, type[MetadataTranslator]]] = deque(maxlen=4)
        self.full_translations = 0  # headers translated in full (about one per exposure)

    def choose(self, path: Path, primary: Hdu) -> type[MetadataTranslator]:
        """The translator for a file's primary header; asked once per kind of header."""
        for signature, translator in self._choices:
            if signature.matches(primary.header, primary.images):
                return translator
        translator, cards = _choose(path, primary.header)
        if cards is not None:
            signature = CardSignature.of(cards, primary.header, primary.images)
            self._choices.appendleft((signature, translator))
        return translator

    def translate(
        self,
        path: Path,
        hdus: Sequence[Hdu],
        instrument: type[Instrument],
        translator: type[MetadataTranslator],
    ) -> list[TranslatedHeader]:
        out = []
        for locator, header in instrument.raw_headers(path, hdus):
            # Corrections first (as ObservationInfo does): the cache compares corrected cards.
            fixed = fix_header(header, translator_class=translator, filename=str(path))
            # The cards as written stand for the header only if it is the file's own, unfixed.
            images = hdus[0].images if header is hdus[0].header and not fixed else None
            exposure = self._exposure(path, header, images, translator)
            detector_num, serial = _detector_properties(path, header, translator)
            out.append(TranslatedHeader(locator, exposure, detector_num, serial))
        return out

    def _exposure(
        self,
        path: Path,
        header: FitsHeader,
        images: Mapping[str, str] | None,
        translator: type[MetadataTranslator],
    ) -> ExposureTranslation:
        for known in self._recent:
            if known.matches(translator, header, images):
                return known
        translation = _translate_exposure(path, header, images, translator)
        self.full_translations += 1
        self._recent.appendleft(translation)
        return translation


def _translate_exposure(
    path: Path,
    header: FitsHeader,
    images: Mapping[str, str] | None,
    translator: type[MetadataTranslator],
) -> ExposureTranslation:
    info = ObservationInfo(
        header,
        translator_class=translator,
        pedantic=False,
        filename=str(path),
        subset=set(EXPOSURE_PROPERTIES),
    )
    missing = [
        p for p in REQUIRED_PROPERTIES if p in EXPOSURE_PROPERTIES and getattr(info, p) is None
    ]
    if missing:
        raise IncompleteHeaderError(
            f"{path}: the {translator.name} header does not give {', '.join(missing)}"
            + _unreadable_cards(header)
        )
    # ObservationInfo keeps its translator private: a second one, asked the same questions,
    # says which cards the answers came from (once per exposure, so the cost is irrelevant).
    reader = translator(header, filename=str(path))
    for prop in EXPOSURE_PROPERTIES:
        with contextlib.suppress(Exception):  # ObservationInfo has already judged the values
            getattr(reader, f"to_{prop}")()
    return ExposureTranslation(
        translator, info, CardSignature.of(reader.cards_used(), header, images)
    )


def _unreadable_cards(header: Mapping[str, Any]) -> str:
    """A hint at why a property may be missing: cards no parser could read."""
    unreadable = getattr(header, "unreadable", None)
    return f" (unreadable card(s): {', '.join(sorted(unreadable))})" if unreadable else ""


def _detector_properties(
    path: Path, header: Mapping[str, Any], translator: type[MetadataTranslator]
) -> tuple[int, str | None]:
    reader = translator(header, filename=str(path))
    try:
        detector = reader.to_detector_num()
    except Exception:  # a translator that cannot say is an incomplete header
        detector = None
    if detector is None:
        raise IncompleteHeaderError(
            f"{path}: the {translator.name} header does not give detector_num"
            + _unreadable_cards(header)
        )
    try:
        serial = reader.to_detector_serial()
    except Exception:  # optional, as with ObservationInfo(pedantic=False)
        serial = None
    return int(detector), None if serial is None else str(serial)
