"""The dashboard's HTTP app: the page, its live feed, one exposure, and ``/metrics``.

- ``GET /``: the page (services/web/static/: HTML, JS and CSS shipped in the package; no CDN,
  the summit may have no internet).
- ``GET /ops/snapshot``: everything the page shows, as JSON.
- ``GET /ops/stream``: the same, as server-sent events, one each time it changes.
- ``GET /ops/exposures/{instrument}/{exposure}``: one exposure's files and datasets.
- ``GET /metrics``: the Prometheus text format (services/ops/metrics.py says what and why).
- ``/api/v1/...``: the read-only registry API (api.py), when the app is given a repository.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..butler import Butler
from ..ops.metrics import exposition
from .api import PREFIX, api_router
from .dashboard import Dashboard
from .errors import add_error_handlers

STATIC = importlib.resources.files("services.web") / "static"


def create_app(
    dashboard: Dashboard, butler: Butler | None = None, stream_every_s: float = 1.0
) -> FastAPI:
    """The app; with ``butler`` (opened read-only) also the read-only API under /api/v1."""
    app = FastAPI(
        title="obsbus",
        summary="The ops dashboard, /metrics and the read-only registry API",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    add_error_handlers(app)
    if butler is not None:
        app.include_router(api_router(butler), prefix=PREFIX)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/ops/snapshot")
    def ops_snapshot() -> dict[str, Any]:
        """Everything the page shows: exposures, latency, failures, dead letters, blessings,
        swaps, services."""
        return dashboard.snapshot()

    @app.get("/ops/stream", include_in_schema=False)
    async def ops_stream(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _events(request, dashboard, stream_every_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/ops/exposures/{instrument}/{exposure}")
    def ops_exposure(instrument: str, exposure: int) -> dict[str, Any]:
        """One exposure's files: each one's outcome, reason, detectors and datasets."""
        detail = dashboard.exposure(instrument, exposure)
        if detail is None:
            raise HTTPException(
                404, f"no exposure {instrument} {exposure} in the dashboard's window"
            )
        return detail

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(exposition(dashboard.metrics_input), media_type=CONTENT_TYPE_LATEST)

    return app


async def _events(request: Request, dashboard: Dashboard, every_s: float) -> AsyncIterator[str]:
    """A snapshot at once, then one whenever the view changed (checked every ``every_s``);
    a comment line otherwise, so proxies and the browser see the stream alive."""
    sent = -1
    while not await request.is_disconnected():
        if dashboard.version != sent:
            snap = await asyncio.to_thread(dashboard.snapshot)
            sent = snap["version"]
            yield f"data: {json.dumps(snap)}\n\n"
        else:
            yield ": idle\n\n"
        await asyncio.sleep(every_s)
