"""Instrument plugins: the base class and how instruments are found."""

from .base import DetectorDef, FilterDef, Instrument
from .loader import ENTRY_POINT_GROUP, available, load_instrument

__all__ = [
    "ENTRY_POINT_GROUP",
    "DetectorDef",
    "FilterDef",
    "Instrument",
    "available",
    "load_instrument",
]
