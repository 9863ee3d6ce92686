"""FITS header cards parsed into a plain mapping: what translators read, at dict speed.

astropy's ``fits.Header`` parses a card's value on first access and reads its configuration
on every access (~20-50 µs a card); a raw file's translation reads dozens of cards, which
made header access the largest cost of ingesting a file. Translators only need a mapping of
keyword to value (astro_metadata_translator's own test headers are dicts), so the cards are
parsed here in one pass: the common value forms (strings, with CONTINUE, logicals, integers,
reals) directly, anything else by astropy's card parser. tests/test_fitsfile.py compares the
result with astropy's on real headers and unusual cards. Not reproduced: record-valued
keyword cards (``DP1 = 'AXIS.1: 1'``) are read as their plain string. A card astropy cannot
read either does not fail the file: reading that card does (``UnreadableCardError``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from astropy.io import fits

from ..core.errors import UnreadableCardError

CARD = 80
# Keywords whose cards carry text, not a value (astropy's "commentary" keywords).
COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})
# Cards that describe one HDU's data layout: not carried over when headers are merged (what
# astropy's ``Header.extend(strip=True)`` drops).
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|THEAP|TFIELDS|"
    r"T(TYPE|FORM|UNIT|SCAL|ZERO|NULL|DISP|DIM|BCOL)\d+|CHECKSUM|DATASUM)$"
)
_INT = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?")


class FitsHeader(dict[str, Any]):
    """Keyword -> value, the first card of a repeated keyword.

    Keywords are stored in upper case (the standard's; a non-standard lower-case keyword too)
    and looked up in any case, ``HIERARCH`` ones with or without that prefix, as in astropy.
    ``unreadable`` holds the cards no parser could read, by keyword: they are in the header
    (``in`` says so) but reading one raises UnreadableCardError.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unreadable: dict[str, str] = {}

    def __missing__(self, key: str) -> Any:
        normal = normal_keyword(key)
        if normal != key and dict.__contains__(self, normal):
            return dict.__getitem__(self, normal)
        if normal in self.unreadable:
            raise UnreadableCardError(
                f"header card {normal} cannot be read ({self.unreadable[normal].rstrip()!r}); "
                "correct the card, or add a header correction for this instrument"
            )
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        if not isinstance(key, str):
            return False
        normal = normal_keyword(key)
        return dict.__contains__(self, normal) or normal in self.unreadable

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def copy(self) -> FitsHeader:
        return self.merged({})

    def merged(self, other: Mapping[str, Any]) -> FitsHeader:
        """This header updated by ``other``'s cards, except ``other``'s data-layout cards
        (a primary header merged with an extension's, as for INHERIT = T)."""
        out = FitsHeader(self)
        out.unreadable = dict(self.unreadable)
        out.update((k, v) for k, v in other.items() if not _STRUCTURAL.match(k))
        if isinstance(other, FitsHeader):
            out.unreadable.update(other.unreadable)
        return out


def normal_keyword(key: str) -> str:
    """A keyword as FitsHeader stores it: upper case, without a ``HIERARCH`` prefix."""
    key = key.upper()
    return key[9:].strip() if key.startswith("HIERARCH ") else key


def parse_cards(text: str) -> tuple[FitsHeader, dict[str, str]]:
    """The header's values, and each keyword's card as written (the first of a repeated
    keyword; none for a string continued on CONTINUE cards, whose first card is not all of
    it). ``text`` holds whole 80-character cards up to (without) END.
    """
    values = FitsHeader()
    images: dict[str, str] = {}
    cards = [text[i : i + CARD] for i in range(0, len(text), CARD)]
    i = 0
    while i < len(cards):
        card = cards[i]
        i += 1
        keyword = card[:8].rstrip().upper()
        if keyword == "HIERARCH":
            equals = card.find("=")
            if equals < 0:
                continue  # astropy reads it as a commentary card: no value
            keyword = card[9:equals].strip().upper()
            field = card[equals + 1 :]
        elif keyword in COMMENTARY or keyword == "CONTINUE":
            continue  # text, not values (a stray CONTINUE is too)
        elif card[8:10] != "= ":
            if "=" in card[:9]:  # "KEY= 5": not standard, but astropy reads it
                keyword, value = _by_astropy(card, keyword)
                _keep(values, images, keyword, card, value)
            continue
        else:
            field = card[10:]
        value = _value(card, field, keyword)
        continued = isinstance(value, _LongString)
        if continued:
            value, i = _continued(value.text, cards, i)
        _keep(values, images, keyword, None if continued else card, value)
    return values, images


def _keep(
    values: FitsHeader, images: dict[str, str], keyword: str, card: str | None, value: Any
) -> None:
    # (dict's own lookup: the keyword is normal already, FitsHeader's "in" would normalise it)
    if dict.__contains__(values, keyword) or keyword in values.unreadable:
        return  # a repeated keyword: the first card counts, as in astropy
    if isinstance(value, _Unreadable):
        values.unreadable[keyword] = value.card
    else:
        values[keyword] = value
    if card is not None:
        images[keyword] = card


class _LongString:
    """A string value ending in "&": the next CONTINUE cards may carry the rest."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Unreadable:
    def __init__(self, card: str) -> None:
        self.card = card


def _value(card: str, field: str, keyword: str) -> Any:
    stripped = field.lstrip()
    if stripped.startswith("'"):
        text = _string(stripped)
        if text is None:
            return _by_astropy(card, keyword)[1]
        text = text.rstrip()  # trailing blanks are not significant, even before a "&"
        return _LongString(text[:-1]) if text.endswith("&") else text
    token = stripped.split("/", 1)[0].strip()
    if not token:
        return None  # no value ("undefined")
    if token == "T":
        return True
    if token == "F":
        return False
    if _INT.fullmatch(token):
        return int(token)
    if _REAL.fullmatch(token):
        return float(token.replace("D", "E").replace("d", "e"))
    return _by_astropy(card, keyword)[1]  # complex and anything unusual: astropy decides


def _string(field: str) -> str | None:
    """The text of a quoted value (``''`` is a quote), or None when it is not well formed."""
    out = []
    pos = 1
    while True:
        end = field.find("'", pos)
        if end < 0:
            return None
        out.append(field[pos:end])
        if field[end + 1 : end + 2] == "'":
            out.append("'")
            pos = end + 2
            continue
        rest = field[end + 1 :].strip()
        return "".join(out) if not rest or rest.startswith("/") else None


def _continued(text: str, cards: list[str], i: int) -> tuple[str, int]:
    """A long string: ``text`` (its "&" removed) joined with the CONTINUE cards that follow."""
    if i >= len(cards) or cards[i][:8] != "CONTINUE":
        return text + "&", i  # a plain value that happens to end in "&"
    while i < len(cards) and cards[i][:8] == "CONTINUE":
        part = _string(cards[i][8:].lstrip())
        if part is None:
            break
        i += 1
        part = part.rstrip()
        if not part.endswith("&"):
            return text + part, i
        text += part[:-1]
    return text.rstrip(), i


def _by_astropy(card: str, keyword: str) -> tuple[str, Any]:
    """astropy's reading of a card: (keyword, value); an _Unreadable value if it has none."""
    try:
        parsed = fits.Card.fromstring(card)
        value = parsed.value
        keyword = normal_keyword(parsed.keyword)
    except Exception:  # astropy's VerifyError, ValueError, ...: the card has no usable value
        return keyword, _Unreadable(card)
    if isinstance(value, fits.card.Undefined):
        return keyword, None  # as fits.Header says
    return keyword, value
