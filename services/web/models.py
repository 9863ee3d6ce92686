"""The JSON the read-only API answers with (and the one request body it reads), as pydantic
models, so the OpenAPI description documents every field.

Times are ISO TAI text; ``begin``/``end`` are a half-open validity range or a record's
timespan, ``null`` where unbounded. Lists come in pages: ``limit`` items from ``offset``, with
the ``next_offset`` and the ``next`` request for the rest (both ``null`` on the last page).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, JsonValue

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**31
MAX_PAIRS = 10_000
MAX_COLLECTIONS = 100
MAX_TEXT = 10_000  # characters of a where expression or a time

DataIdValue = int | str
LookupValue = int | float | str | None


class ErrorDetail(BaseModel):
    code: str = Field(description="The reason code, as the CLI's errors and bus events carry it")
    message: str = Field(description="One line saying what was wrong and what to do")


class ErrorResponse(BaseModel):
    """Every error the API answers: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class Page(BaseModel):
    limit: int = Field(description="Page size asked for")
    offset: int = Field(description="Position of this page's first item in the whole result")
    next_offset: int | None = Field(description="Offset of the next page; null on the last page")
    next: str | None = Field(description="The request (path and query) for the next page")


class CollectionOut(BaseModel):
    name: str
    type: str = Field(description="RUN, TAGGED, CALIBRATION or CHAINED")
    children: list[str] | None = Field(description="A CHAINED collection's search path")
    frozen_at: str | None = Field(description="When it was frozen (ISO TAI), if it is")
    doc: str | None


class CollectionPage(Page):
    items: list[CollectionOut]


class DatasetTypeOut(BaseModel):
    name: str
    dimensions: list[str]
    storage_class: str
    is_calibration: bool


class DatasetTypePage(Page):
    items: list[DatasetTypeOut]


class DatasetRefOut(BaseModel):
    dataset_id: uuid.UUID
    dataset_type: str
    data_id: dict[str, DataIdValue]
    run: str


class DatasetOut(DatasetRefOut):
    collection: str = Field(description="The collection it was found in")
    uri: str = Field(description="Where its file is (on the server)")
    formatter: str


class DatasetPage(Page):
    items: list[DatasetOut]


class RecordPage(Page):
    items: list[dict[str, JsonValue]] = Field(
        description="Records: their fields, and their timespan as begin/end (ISO TAI)"
    )


class CalibrationMatchOut(DatasetRefOut):
    collection: str = Field(description="The collection it was found in")
    begin: str | None = Field(description="Start of the validity range it was found with")
    end: str | None = Field(description="End of that range (exclusive)")


class FoundCalibration(CalibrationMatchOut):
    uri: str = Field(description="Where its file is (on the server)")
    formatter: str
    lookup: dict[str, LookupValue] = Field(
        description="The data ID looked up, with what the exposure implies (filter, band, ...)"
    )
    as_of: str = Field(description="The moment the registry answered as of (ISO TAI)")


class PairsRequest(BaseModel):
    """Many calibration lookups of one dataset type, resolved together."""

    model_config = ConfigDict(extra="forbid")

    dataset_type: str = Field(max_length=200)
    collections: list[str] = Field(
        min_length=1, max_length=MAX_COLLECTIONS, description="CALIBRATION collections or chains"
    )
    data_id: dict[str, DataIdValue] = Field(
        default_factory=dict, description="Data ID values shared by every pair"
    )
    pairs: list[dict[str, DataIdValue]] = Field(
        min_length=1,
        max_length=MAX_PAIRS,
        description="Each an exposure or a time (ISO TAI) with its data ID values",
    )
    as_of: str | None = Field(None, max_length=100, description="Answer as of then (ISO TAI)")


class PairOut(BaseModel):
    lookup: dict[str, LookupValue] = Field(description="The pair, with its exposure's values")
    found: CalibrationMatchOut | None = Field(description="null where nothing is certified")


class PairsAnswer(BaseModel):
    dataset_type: str
    as_of: str = Field(description="The moment the registry answered as of (ISO TAI)")
    items: list[PairOut] = Field(description="One per pair, in the order asked")
