"""The read-only HTTP API: JSON answers to what the CLI's queries answer, under ``/api/v1``.

``create_api(repo)`` is the whole app (OpenAPI at ``/api/v1/openapi.json``, its pages at
``/api/v1/docs``); ``api_router(butler)`` and ``add_error_handlers`` put the same into
another app. The repository is opened read-only (``readonly.py``): the database itself
refuses writes. Every endpoint reads in one transaction; what the registry's lookups raise
comes back as the JSON error of ``errors.py``, with the CLI's reason code. A ``where`` is
parsed by obsbus's own parser before anything else is done, as is every time.

Run it with ``python -m services.web.api REPO [--host H] [--port P]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from sqlalchemy.engine import Connection

from ..butler import Butler
from ..core.dimensions import parse_data_id_args
from ..core.errors import InputError
from ..core.timespan import ns_to_iso
from ..core.where_parser import parse
from ..registry.calib_lookup import as_of_moment, lookup_queries, lookup_timespan
from ..registry.collections import CollectionType
from ..registry.datasets import DatasetRef
from ..registry.records import flat_record
from ..registry.registry import CalibrationMatch
from .errors import ERROR_RESPONSES, add_error_handlers
from .models import (
    DEFAULT_LIMIT,
    MAX_COLLECTIONS,
    MAX_LIMIT,
    MAX_OFFSET,
    MAX_TEXT,
    CalibrationMatchOut,
    CollectionOut,
    CollectionPage,
    DatasetOut,
    DatasetPage,
    DatasetTypeOut,
    DatasetTypePage,
    FoundCalibration,
    PairOut,
    PairsAnswer,
    PairsRequest,
    RecordPage,
)
from .readonly import open_read_only

PREFIX = "/api/v1"

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT} (more is refused)")
]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Position of the first item")]
Collections = Annotated[
    list[str],
    Query(min_length=1, max_length=MAX_COLLECTIONS, description="Searched in order; repeat it"),
]
DatasetTypeName = Annotated[str, Query(max_length=200, description="A dataset type")]
Where = Annotated[
    str | None,
    Query(
        max_length=MAX_TEXT,
        description="e.g. `detector IN (1..4) AND exposure.observation_type = 'bias'`",
    ),
]
Time = Annotated[str | None, Query(max_length=100, description="ISO TAI")]


def _where(expr: str | None) -> str | None:
    """``expr`` once obsbus's parser has read it (a malformed one is a 400 right here)."""
    if expr:
        parse(expr)
    return expr or None


def _page(request: Request, limit: int, offset: int, more: bool) -> dict[str, Any]:
    """The page fields; ``more``: there is an item after this page's last."""
    if not more:
        return {"limit": limit, "offset": offset, "next_offset": None, "next": None}
    nxt = offset + limit
    query = request.url.include_query_params(offset=nxt).query
    return {
        "limit": limit,
        "offset": offset,
        "next_offset": nxt,
        "next": f"{request.url.path}?{query}",
    }


def _ref(ref: DatasetRef) -> dict[str, Any]:
    return {
        "dataset_id": ref.id,
        "dataset_type": ref.dataset_type.name,
        "data_id": dict(ref.data_id),
        "run": ref.run,
    }


def _match(match: CalibrationMatch) -> dict[str, Any]:
    begin, end = match.timespan.to_iso() if match.timespan is not None else (None, None)
    return {**_ref(match.ref), "collection": match.collection, "begin": begin, "end": end}


def api_router(butler: Butler) -> APIRouter:
    """The endpoints, reading ``butler`` (open it with ``readonly.open_read_only``)."""
    router = APIRouter(responses=ERROR_RESPONSES)
    registry = butler.registry

    @contextmanager
    def reading() -> Iterator[Connection]:
        with registry.db.transaction(write=False) as conn:
            yield conn

    def file_of(ref: DatasetRef) -> dict[str, str]:
        stored = butler.stored_file(ref)
        return {"uri": butler.datastore.uri(stored), "formatter": stored.formatter}

    @router.get("/collections", summary="List collections")
    def collections(
        request: Request,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
        type_: Annotated[
            str | None,
            Query(alias="type", max_length=20, description="RUN, TAGGED, CALIBRATION, CHAINED"),
        ] = None,
        glob: Annotated[
            str | None, Query(max_length=200, description="Names matching, e.g. `SimCam/calib*`")
        ] = None,
    ) -> CollectionPage:
        """Collections by name (as `obsbus query-collections`), optionally of one type and
        matching a glob (`*`, `?`, `[...]`); a CHAINED one with its children, in order."""
        wanted = CollectionType.parse(type_) if type_ else None
        with reading():
            found = [
                c
                for c in registry.query_collections()
                if (wanted is None or c.type is wanted)
                and (glob is None or fnmatchcase(c.name, glob))
            ]
            items = [
                CollectionOut(
                    name=c.name,
                    type=c.type.value,
                    children=registry.get_chain(c.name)
                    if c.type is CollectionType.CHAINED
                    else None,
                    frozen_at=ns_to_iso(c.frozen_at),
                    doc=c.doc,
                )
                for c in found[offset : offset + limit]
            ]
        return CollectionPage(
            items=items, **_page(request, limit, offset, len(found) > offset + limit)
        )

    @router.get("/dataset-types", summary="List dataset types")
    def dataset_types(
        request: Request, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0
    ) -> DatasetTypePage:
        """Dataset types by name (as `obsbus query-dataset-types`)."""
        with reading():
            found = registry.query_dataset_types()
        items = [
            DatasetTypeOut(
                name=t.name,
                dimensions=list(t.dimensions),
                storage_class=t.storage_class,
                is_calibration=t.is_calibration,
            )
            for t in found[offset : offset + limit]
        ]
        return DatasetTypePage(
            items=items, **_page(request, limit, offset, len(found) > offset + limit)
        )

    @router.get("/datasets", summary="Search collections for datasets")
    def datasets(
        request: Request,
        dataset_type: DatasetTypeName,
        collections: Collections,
        where: Where = None,
        find_first: Annotated[
            bool, Query(description="One dataset per data ID: the first along the collections")
        ] = False,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> DatasetPage:
        """Datasets of a type in the collections (as `obsbus query-datasets`), each with the
        collection it was found in and its file; in collection order, then by data ID."""
        expr = _where(where)
        with reading():
            found = registry.query_datasets(dataset_type, collections, expr, find_first=find_first)
            items = [
                DatasetOut(**_ref(ref), collection=name, **file_of(ref))
                for ref, name in found[offset : offset + limit]
            ]
        return DatasetPage(
            items=items, **_page(request, limit, offset, len(found) > offset + limit)
        )

    @router.get("/dimension-records/{element}", summary="List dimension records")
    def dimension_records(
        request: Request,
        element: str,
        where: Where = None,
        limit: Limit = DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> RecordPage:
        """Records of a dimension element (`exposure`, `detector`, ...; as `obsbus
        query-dimension-records`), by key; `where` over the element's fields."""
        expr = _where(where)
        registry.universe[element]  # an unknown element is a 404 before any query
        with reading():
            found = registry.query_dimension_records(element, expr, limit=limit + 1, offset=offset)
        items = [flat_record(r) for r in found[:limit]]
        return RecordPage(items=items, **_page(request, limit, offset, len(found) > limit))

    @router.get("/find-calibration", summary="Which calibration applies")
    def find_calibration(
        dataset_type: DatasetTypeName,
        collections: Collections,
        data_id: Annotated[
            list[str] | None, Query(max_length=50, description="KEY=VALUE; repeat it")
        ] = None,
        time: Time = None,
        exposure: Annotated[int | None, Query(description="Use its timespan and filter")] = None,
        as_of: Annotated[str | None, Query(max_length=100, description="ISO TAI")] = None,
    ) -> FoundCalibration:
        """The dataset that applies to the data ID at `time` or during `exposure`, first
        along the collections (as `obsbus find-calibration`); `as_of`: as the registry would
        have answered then (default now; the answer says which moment)."""
        if time is not None and exposure is not None:
            raise InputError("give time or exposure, not both")
        values: dict[str, Any] = parse_data_id_args(data_id or [])
        moment = as_of_moment(as_of)
        with reading():
            ts = lookup_timespan(registry, values, time=time, exposure=exposure)
            if ts is None:
                raise InputError("give time (ISO TAI) or exposure")
            match = butler.find(dataset_type, values, collections, ts, moment)
            return FoundCalibration(
                **_match(match),
                **file_of(match.ref),
                lookup=butler.typed_data_id(values),
                as_of=str(ns_to_iso(moment)),
            )

    @router.post("/find-calibration/pairs", summary="Many calibration lookups at once")
    def find_calibration_pairs(body: PairsRequest) -> PairsAnswer:
        """Which calibration applies to each pair (an exposure or a time, with data ID
        values; `data_id` is shared by all), with one bulk query however many pairs (as
        `obsbus find-calibration --pairs`); `found` is null where nothing applies. The
        collections must be CALIBRATION collections or chains of them."""
        moment = as_of_moment(body.as_of)
        lookups: Sequence[dict[str, Any]] = [{**body.data_id, **pair} for pair in body.pairs]
        with reading():
            queries = lookup_queries(
                registry, lookups, "pairs", "add instrument to the pair or to data_id"
            )
            matches = registry.find_calibrations_bulk(
                body.dataset_type, body.collections, queries, moment
            )
        items = [
            PairOut(
                lookup=butler.typed_data_id(values),
                found=None if m is None else CalibrationMatchOut(**_match(m)),
            )
            for (values, _), m in zip(queries, matches, strict=True)
        ]
        return PairsAnswer(
            dataset_type=body.dataset_type, as_of=str(ns_to_iso(moment)), items=items
        )

    return router


def create_api(repo: str | Path) -> FastAPI:
    """The API app for ``repo``, opened read-only now and closed when the app shuts down."""
    butler = open_read_only(repo)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            butler.close()

    app = FastAPI(
        title="obsbus read-only API",
        summary="Collections, dataset types, datasets, dimension records, calibration lookups",
        version="1",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.butler = butler  # what it serves (tests look at it)
    app.include_router(api_router(butler), prefix=PREFIX)
    add_error_handlers(app)
    return app
