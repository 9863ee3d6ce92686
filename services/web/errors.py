"""Errors as the API answers them: ``{"error": {"code": ..., "message": ...}}``, never a
traceback.

An obsbus error keeps the reason code of its type (``services/core/errors.py``, the codes the
CLI and the bus events use) and its one-line message; its type also picks the status (404
for what does not exist, 503 for an outage, 400 for the rest of what a request can get
wrong). A request FastAPI cannot validate is 422 ``bad_input`` saying which parameter; an
unknown path 404 ``not_found``; anything else is a bug: 500 ``internal``, its traceback in
the server's log only.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..core.errors import (
    CameraDetectorNotFoundError,
    DatabaseError,
    DatasetNotFoundError,
    InputError,
    MissingCollectionError,
    MissingDatasetTypeError,
    ObsbusError,
    OutageError,
    ReadOnlyError,
    RecordNotFoundError,
    UnknownDimensionError,
)
from .models import ErrorResponse

log = structlog.get_logger("obsbus.web")

MAX_MESSAGE = 1000

# First match wins: an outage is 503 even when it is also a DatabaseError.
_STATUS: tuple[tuple[type[ObsbusError], int], ...] = (
    (OutageError, 503),
    (DatabaseError, 500),  # the database refused what obsbus did not anticipate
    (ReadOnlyError, 500),  # an endpoint tried to write: a bug of the API
    (MissingCollectionError, 404),
    (MissingDatasetTypeError, 404),
    (UnknownDimensionError, 404),
    (RecordNotFoundError, 404),
    (DatasetNotFoundError, 404),
    (CameraDetectorNotFoundError, 404),
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "The request is wrong (bad where, data ID, time, ...): the code says why"),
        (404, "Unknown collection, dataset type, dimension element, or nothing found"),
        (422, "A parameter is missing or out of range (code bad_input)"),
        (503, "The registry database is unavailable: try again later"),
    )
}
"""For the OpenAPI description: what every endpoint may answer besides 200."""


def status_for(err: ObsbusError) -> int:
    return next((status for kind, status in _STATUS if isinstance(err, kind)), 400)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    lines = message.strip().splitlines() or [""]
    line = lines[0][:MAX_MESSAGE]
    return JSONResponse({"error": {"code": code, "message": line}}, status_code=status)


def validation_message(err: RequestValidationError) -> str:
    """Which parameters were wrong and why, in one line (never the values sent)."""
    parts = []
    for item in err.errors()[:3]:
        loc = [str(p) for p in item.get("loc", ())] or ["request"]
        where, name = loc[0], ".".join(loc[1:])
        what = {"query": "query parameter", "path": "path parameter"}.get(where, where)
        parts.append(f"{what} {name}: {item.get('msg', 'invalid')}" if name else item["msg"])
    return "; ".join(parts) or "invalid request"


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the one JSON shape."""

    @app.exception_handler(ObsbusError)
    async def obsbus_error(request: Request, err: ObsbusError) -> JSONResponse:
        status = status_for(err)
        if status >= 500:
            log.error("api request failed", path=request.url.path, code=err.code, error=str(err))
        return error_response(status, err.code, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, InputError.code, validation_message(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error_response(err.status_code, code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.error(
            "api request failed with an unexpected error",
            path=request.url.path,
            error=f"{type(err).__name__}: {err}",
            exc_info=err,
        )
        return error_response(
            500, "internal", "internal error: it is logged on the server; please report it"
        )
