"""The camera description: a versioned calibration dataset, and its per-detector component.

A camera file (YAML or JSON) is a mapping with ``name`` and ``detectors``; each detector has
its id, full name, serial (the device in that slot), purpose, geometry and amplifiers (gain in
electrons per ADU, read noise in electrons). Other top-level keys (``instrument``,
``calibration_type``, comments) are kept: they say what the file is (see curated.py).

Reading a whole camera returns the mapping as stored (checked against ``Camera``); the
``detector`` component returns one detector's description, picked by id or full name, so
``camera.detector`` can be addressed with the detector dimension although the camera's own
dimensions are (instrument) only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.core.errors import CameraDetectorNotFoundError, FormatterError
from services.datastore.formatters import Formatter, JsonFormatter, YamlFormatter

__all__ = [
    "DETECTOR_COMPONENT",
    "Amplifier",
    "Camera",
    "CameraJsonFormatter",
    "CameraYamlFormatter",
    "DetectorDescription",
    "Geometry",
]

DETECTOR_COMPONENT = "detector"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Amplifier(_Strict):
    name: str = Field(min_length=1)
    gain: float = Field(gt=0, description="electrons per ADU")
    read_noise: float = Field(ge=0, description="electrons")


class Geometry(_Strict):
    nx: int = Field(gt=0, description="pixels along x")
    ny: int = Field(gt=0, description="pixels along y")
    pixel_size_um: float = Field(gt=0, description="micrometres")


class DetectorDescription(_Strict):
    id: int = Field(ge=0)
    name: str = Field(min_length=1)
    serial: str = Field(min_length=1)
    purpose: Literal["science", "guider", "wavefront"]
    geometry: Geometry
    amplifiers: list[Amplifier] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_amplifiers(self) -> DetectorDescription:
        names = [a.name for a in self.amplifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"detector {self.name}: amplifier names repeat")
        return self


class Camera(BaseModel):
    """One version of a camera description (extra top-level keys are allowed and kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    detectors: list[DetectorDescription] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_detectors(self) -> Camera:
        for what in ("id", "name", "serial"):
            values = [getattr(d, what) for d in self.detectors]
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"detector {what}s must be unique: {', '.join(repeated)} repeat")
        return self

    def detector(self, key: int | str) -> DetectorDescription:
        """The detector with that id (an int, or digits) or full name (e.g. ``R22_S11``)."""
        for d in self.detectors:
            if d.name == key or d.id == _as_id(key):
                return d
        ids = sorted(d.id for d in self.detectors)
        raise CameraDetectorNotFoundError(
            f"the {self.name} camera version that applies has no detector {key!r} (its "
            f"detectors are ids {ids[0]}-{ids[-1]} or their names); give one of those"
        )


def _as_id(key: int | str) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    return int(key) if key.strip().isdigit() else None


def parse_camera(content: Any, where: Path) -> Camera:
    """Check ``content`` is a camera description; a problem is one line naming the file."""
    try:
        return Camera.model_validate(content)
    except ValidationError as err:
        first = err.errors()[0]
        location = ".".join(str(p) for p in first["loc"]) or "top level"
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        raise FormatterError(
            f"{where} is not a camera description: {location}: {first['msg']}{more}"
        ) from None


class _CameraFormat(Formatter):
    """What the camera formatters share: check the content, and pick a detector out of it.

    Mixed in before a concrete format (YAML, JSON), whose ``read``/``write`` do the I/O.
    """

    components: ClassVar[frozenset[str]] = frozenset({DETECTOR_COMPONENT})
    component_parameters: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType(
        {DETECTOR_COMPONENT: frozenset({"detector"})}
    )

    def read(self, path: Path, component: str | None = None) -> Any:
        self.check_component(component)
        content = super().read(path)  # type: ignore[safe-super]  # the concrete format's
        camera = parse_camera(content, path)  # a whole read is checked too, not only components
        if component == DETECTOR_COMPONENT:
            return camera.detector(self.parameters["detector"]).model_dump()
        return content

    def write(self, obj: Any, path: Path) -> None:
        parse_camera(obj, path)
        super().write(obj, path)  # type: ignore[safe-super]  # the concrete format's


class CameraYamlFormatter(_CameraFormat, YamlFormatter):
    """A camera description as YAML; component ``detector`` needs parameter ``detector``."""


class CameraJsonFormatter(_CameraFormat, JsonFormatter):
    """A camera description as JSON; component ``detector`` needs parameter ``detector``."""
