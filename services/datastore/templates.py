"""File path templates: where in the datastore a dataset's file goes.

A template is text with ``{field}`` placeholders. ``{run}`` and ``{dataset_type}`` are always
filled (and must appear); every other field is a data ID key, e.g. ``{detector}``.

``{key:?}`` is optional: when the data ID has no ``key``, the placeholder is dropped together
with one separator, so no ``//`` or ``__`` is left behind. The separator dropped is the ``_``
just before the placeholder if there is one, else the ``/`` or ``_`` just after it, else the
``/`` just before it. So ``{dataset_type}_{band:?}_{detector}`` gives ``flat_12`` without a
band, and ``{run}/{instrument:?}/{day_obs}`` gives ``run/20240101`` without an instrument.

Each rendered path is unique per (run, dataset_type, data ID): data ID keys the template does
not mention are appended to the file name as ``_key-value`` (sorted by key). Values are
sanitised so they cannot create directories or escape the root: every character outside
``[A-Za-z0-9._+-]`` becomes ``_``. The run is the one field whose ``/`` separates directories
(run "HSC/raw/all" -> "HSC/raw/all/..."). A path with an empty, ``.`` or ``..`` segment is
refused with ``PathEscapeError``. The caller appends the file extension.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.errors import ConfigError, DatastoreError, PathEscapeError

DEFAULT_TEMPLATE = (
    "{run}/{dataset_type}/{instrument:?}/{day_obs:?}/{exposure:?}/{visit:?}/"
    "{dataset_type}_{instrument:?}_{exposure:?}_{visit:?}_{detector:?}"
    "_{physical_filter:?}_{band:?}"
)

RESERVED_FIELDS = frozenset({"run", "dataset_type"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_LITERAL_OK = re.compile(r"[A-Za-z0-9._+/-]*")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEPARATORS = ("/", "_")


def sanitize(value: object) -> str:
    """``str(value)`` with every character outside ``[A-Za-z0-9._+-]`` replaced by ``_``."""
    return _UNSAFE.sub("_", str(value))


@dataclass(frozen=True)
class _Field:
    name: str
    optional: bool


@dataclass
class _Piece:
    kind: str  # "lit": one literal character; "text": rendered value; "drop"; "gone"
    text: str = ""


class PathTemplate:
    """A parsed, validated path template (see the module docstring for the rules)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._tokens = _parse(template)
        fields = [t for t in self._tokens if isinstance(t, _Field)]
        for reserved in sorted(RESERVED_FIELDS):
            if not any(f.name == reserved and not f.optional for f in fields):
                raise ConfigError(
                    f"path template {template!r} must contain {{{reserved}}} (not optional) "
                    "so that every dataset gets its own file"
                )
        # Data ID keys the template places; any others go into the file name.
        self.fields = frozenset(f.name for f in fields) - RESERVED_FIELDS
        self._plans: dict[frozenset[str], tuple[str | _Field, ...]] = {}

    def __repr__(self) -> str:
        return f"PathTemplate({self.template!r})"

    def render(self, *, run: str, dataset_type: str, data_id: Mapping[str, str | int]) -> str:
        """Return the relative POSIX path (no extension) for one dataset."""
        clash = RESERVED_FIELDS & data_id.keys()
        if clash:
            raise DatastoreError(
                f"data ID key(s) {', '.join(sorted(clash))} clash with template fields; "
                "rename the dimension"
            )
        present = frozenset(data_id.keys() & self.fields)
        plan = self._plans.get(present)
        if plan is None:
            plan = self._plans[present] = self._plan(present, data_id)
        parts = []
        for part in plan:
            if isinstance(part, str):
                parts.append(part)
            elif part.name == "run":
                # Only the run keeps its '/' (nested run names become directories).
                parts.append("/".join(sanitize(p) for p in run.split("/")))
            elif part.name == "dataset_type":
                parts.append(sanitize(dataset_type))
            else:
                parts.append(sanitize(data_id[part.name]))
        path = "".join(parts)
        extra = sorted(data_id.keys() - self.fields)
        if extra:
            path += "".join(f"_{sanitize(k)}-{sanitize(data_id[k])}" for k in extra)
        for segment in path.split("/"):
            if segment in ("", ".", ".."):
                raise PathEscapeError(
                    f"refusing datastore path {path!r}: it has an empty, '.' or '..' part "
                    f"(run {run!r}, data ID {dict(data_id)!r})"
                )
        return path

    def _plan(
        self, present: frozenset[str], data_id: Mapping[str, str | int]
    ) -> tuple[str | _Field, ...]:
        """The template for data IDs with exactly the ``present`` keys it names: literal text
        and the fields to fill, absent optional fields dropped with their separator. (Which
        separators go depends only on which fields are present, so it is worked out once.)
        """
        pieces: list[_Piece] = []
        fields: dict[int, _Field] = {}  # piece index -> the field it stands for
        for token in self._tokens:
            if isinstance(token, str):
                pieces.extend(_Piece("lit", char) for char in token)
            elif token.name in RESERVED_FIELDS or token.name in present:
                fields[len(pieces)] = token
                pieces.append(_Piece("text"))
            elif token.optional:
                pieces.append(_Piece("drop"))
            else:
                have = ", ".join(sorted(data_id)) or "none"
                raise DatastoreError(
                    f"path template {self.template!r} needs data ID key {token.name!r} "
                    f"(data ID has: {have}); mark it optional with {{{token.name}:?}}"
                )
        _drop_optional(pieces)
        plan: list[str | _Field] = []
        for index, piece in enumerate(pieces):
            if piece.kind == "text":
                plan.append(fields[index])
            elif piece.kind == "lit":
                if plan and isinstance(plan[-1], str):
                    plan[-1] += piece.text
                else:
                    plan.append(piece.text)
        return tuple(plan)


def _parse(template: str) -> list[str | _Field]:
    if template.startswith("/"):
        raise ConfigError(f"path template {template!r} must be relative (no leading '/')")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"path template {template!r} is malformed: {exc}") from exc
    tokens: list[str | _Field] = []
    for literal, name, spec, conversion in parsed:
        if not _LITERAL_OK.fullmatch(literal):
            raise ConfigError(
                f"path template {template!r}: literal text {literal!r} may only use "
                "letters, digits and . _ + - /"
            )
        if literal:
            tokens.append(literal)
        if name is None:
            continue
        if not _FIELD_NAME.fullmatch(name) or conversion is not None or spec not in ("", "?"):
            raise ConfigError(
                f"path template {template!r}: bad placeholder {{{name}}}; "
                "use {key} or {key:?} for an optional key"
            )
        tokens.append(_Field(name, optional=spec == "?"))
    return tokens


def _drop_optional(pieces: list[_Piece]) -> None:
    """Remove each absent optional field with one adjacent separator (rule in module doc)."""
    for index, piece in enumerate(pieces):
        if piece.kind != "drop":
            continue
        piece.kind = "gone"
        before = _neighbour(pieces, index, -1)
        after = _neighbour(pieces, index, +1)
        if before is not None and before.text == "_":
            before.kind = "gone"
        elif after is not None and after.text in _SEPARATORS:
            after.kind = "gone"
        elif before is not None and before.text == "/":
            before.kind = "gone"


def _neighbour(pieces: list[_Piece], index: int, step: int) -> _Piece | None:
    """The nearest literal character beside ``index``, skipping dropped fields; None if a
    rendered value comes first (values never lose characters)."""
    index += step
    while 0 <= index < len(pieces):
        piece = pieces[index]
        if piece.kind == "lit":
            return piece
        if piece.kind == "text":
            return None
        index += step
    return None
