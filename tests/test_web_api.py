"""The read-only HTTP API (services/web/api.py) against a real repository, on SQLite and on
PostgreSQL: every endpoint's values, paging, the JSON errors, the OpenAPI description, and
the read-only session refusing writes in the database itself.

The repository (one per backend, shared by the module's tests, which only read it): SimCam
with its curated calibrations (``SimCam/calib``, a chain), three exposures of two detectors
ingested as raws (the third a bias), and a ``bias`` calibration certified from 2024-11-01,
detector 95's then cut out of 2024-11-26 (so ``as_of`` before the cut still finds it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from services.butler import Butler
from services.calib.curated import write_curated_calibrations
from services.core.errors import DatabaseError, ExpressionError, ReadOnlyError
from services.core.timespan import Timespan, now_ns, ns_to_iso
from services.core.where_parser import parse
from services.ingest.raws import RawIngester, find_raw_files
from services.instruments.simcam import SimCam, write_exposure
from services.instruments.simcam.generator import ExposureSpec
from services.registry.collections import CollectionType
from services.registry.datasets import DatasetType
from services.web.api import PREFIX, create_api
from services.web.models import MAX_LIMIT, MAX_PAIRS
from services.web.readonly import open_read_only
from tests.conftest import postgres_url

RAW = "SimCam/raw/all"
CALIB = "SimCam/calib"
BIAS_RUN = "SimCam/calib/bias-run"
BIAS = "SimCam/calib/bias"
DETECTORS = (94, 95)
CUT = ("2024-11-26T00:00:00", "2024-11-27T00:00:00")


def exposure_id(seq: int) -> int:
    return 2024112500000 + seq


@dataclass(frozen=True)
class Repo:
    butler: Butler  # opened for writing, to compare the API's answers with the library's
    client: TestClient
    before_cut: str  # ISO TAI: after the bias was certified, before detector 95's cut


def _populate(butler: Butler, landing: Path) -> str:
    registry = butler.registry
    SimCam.register(registry)
    write_curated_calibrations(butler, SimCam, "v1")
    for seq in (1, 2, 3):
        spec = ExposureSpec(img_type="BIAS") if seq == 3 else None
        when = f"2024-11-26T01:{seq:02d}:00"
        write_exposure(landing, seq, when, spec, detectors=DETECTORS)
    outcomes = list(RawIngester(butler).ingest(find_raw_files([landing])))
    assert {o.status for o in outcomes} == {"ingested"}
    butler.register_dataset_type(
        DatasetType("bias", ("instrument", "detector"), "Json", is_calibration=True)
    )
    refs = [
        butler.put({"level": d}, "bias", {"instrument": "SimCam", "detector": d}, BIAS_RUN)
        for d in DETECTORS
    ]
    registry.register_collection(BIAS, CollectionType.CALIBRATION)
    registry.certify(BIAS, refs, Timespan.from_times("2024-11-01", None))
    before = ns_to_iso(now_ns())
    assert before is not None
    cut = Timespan.from_times(*CUT)
    registry.decertify(BIAS, "bias", cut, [{"instrument": "SimCam", "detector": 95}])
    return before


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def repo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Repo]:
    """As conftest's ``db_settings``, for the module: SQLite in the repo, or a fresh schema."""
    tmp = tmp_path_factory.mktemp(f"api-{request.param}")
    settings: dict[str, str | None] = {"db": None, "db_namespace": None}
    if request.param == "postgresql":
        settings = {"db": postgres_url(), "db_namespace": f"t_{uuid.uuid4().hex[:16]}"}
    butler = Butler.create(tmp / "repo", actor="pytest", **settings)
    try:
        before = _populate(butler, tmp / "landing")
        with TestClient(create_api(tmp / "repo")) as client:
            yield Repo(butler, client, before)
    finally:
        butler.close()
        if settings["db"] is not None:
            engine = sqlalchemy.create_engine(settings["db"])
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{settings["db_namespace"]}" CASCADE')
            engine.dispose()


def get(repo: Repo, path: str, **params: Any) -> Any:
    response = repo.client.get(PREFIX + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def every_page(repo: Repo, path: str, limit: int, **params: Any) -> list[list[Any]]:
    """The items of each page, following ``next`` from the first page to the last."""
    page = get(repo, path, limit=limit, **params)
    pages = [page["items"]]
    while page["next"] is not None:
        assert page["next_offset"] == page["offset"] + limit
        response = repo.client.get(page["next"])
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["items"])
    assert page["next_offset"] is None
    return pages


# --- every endpoint, with real values ----------------------------------------------------------


def test_collections(repo: Repo) -> None:
    registry = repo.butler.registry
    page = get(repo, "/collections", limit=MAX_LIMIT)
    assert [c["name"] for c in page["items"]] == [c.name for c in registry.query_collections()]
    assert page["next"] is None and page["offset"] == 0
    by_name = {c["name"]: c for c in page["items"]}
    assert by_name[CALIB]["type"] == "CHAINED"
    assert by_name[CALIB]["children"] == registry.get_chain(CALIB)
    assert by_name[RAW] == {
        "name": RAW,
        "type": "RUN",
        "children": None,
        "frozen_at": None,
        "doc": None,
    }
    calibration = get(repo, "/collections", type="calibration")["items"]
    assert BIAS in {c["name"] for c in calibration}
    assert {c["type"] for c in calibration} == {"CALIBRATION"}
    globbed = get(repo, "/collections", glob="SimCam/calib/bias*")["items"]
    assert [c["name"] for c in globbed] == [BIAS, BIAS_RUN]


def test_dataset_types(repo: Repo) -> None:
    items = get(repo, "/dataset-types")["items"]
    names = [t.name for t in repo.butler.registry.query_dataset_types()]
    assert [t["name"] for t in items] == names
    bias = next(t for t in items if t["name"] == "bias")
    assert bias == {
        "name": "bias",
        "dimensions": ["instrument", "detector"],
        "storage_class": "Json",
        "is_calibration": True,
    }
    raw = next(t for t in items if t["name"] == "raw")
    assert raw["is_calibration"] is False and "exposure" in raw["dimensions"]


def test_datasets_with_where(repo: Repo) -> None:
    where = "detector = 94 AND exposure.observation_type = 'science'"
    items = get(repo, "/datasets", dataset_type="raw", collections=[RAW], where=where)["items"]
    expected = repo.butler.registry.query_datasets("raw", [RAW], where)
    assert [i["dataset_id"] for i in items] == [str(ref.id) for ref, _ in expected]
    assert [i["data_id"]["exposure"] for i in items] == [exposure_id(1), exposure_id(2)]
    first = items[0]
    assert first["data_id"]["detector"] == 94 and first["data_id"]["instrument"] == "SimCam"
    assert (first["run"], first["collection"], first["dataset_type"]) == (RAW, RAW, "raw")
    ref = expected[0][0]
    assert first["uri"] == repo.butler.uri(ref)
    assert first["formatter"] == repo.butler.stored_file(ref).formatter
    everything = get(repo, "/datasets", dataset_type="raw", collections=[RAW])["items"]
    assert len(everything) == 6


def test_datasets_find_first(repo: Repo) -> None:
    params = {"dataset_type": "bias", "collections": [BIAS, BIAS_RUN]}
    both = get(repo, "/datasets", **params)["items"]  # each bias is in both
    assert [(i["collection"], i["data_id"]["detector"]) for i in both] == [
        (name, d) for name in (BIAS, BIAS_RUN) for d in DETECTORS
    ]
    pages = every_page(repo, "/datasets", 3, **params)  # the next link keeps both collections
    assert [item for page in pages for item in page] == both
    first = get(repo, "/datasets", **params, find_first=True)["items"]
    assert [i["data_id"]["detector"] for i in first] == list(DETECTORS)
    assert {i["collection"] for i in first} == {BIAS}


def test_dimension_records(repo: Repo) -> None:
    items = get(repo, "/dimension-records/exposure")["items"]
    assert [r["id"] for r in items] == [exposure_id(s) for s in (1, 2, 3)]
    registry = repo.butler.registry
    (record,) = registry.query_dimension_records("exposure", f"id = {exposure_id(1)}")
    one = items[0]
    assert one["observation_type"] == "science" and one["instrument"] == "SimCam"
    assert (one["begin"], one["end"]) == record["timespan"].to_iso()
    assert "timespan" not in one
    bias = get(repo, "/dimension-records/exposure", where="observation_type = 'bias'")["items"]
    assert [r["id"] for r in bias] == [exposure_id(3)]
    detectors = get(repo, "/dimension-records/detector", limit=MAX_LIMIT)["items"]
    assert len(detectors) == len(SimCam.detectors) == 205


def test_find_calibration_by_time_and_by_exposure(repo: Repo) -> None:
    base = {"dataset_type": "defects", "collections": [CALIB]}
    data_id = ["instrument=SimCam", "detector=94"]
    by_time = get(repo, "/find-calibration", **base, data_id=data_id, time="2024-11-26T01:01:30")
    match = repo.butler.find(
        "defects", {"instrument": "SimCam", "detector": 94}, [CALIB], Timespan.at(by_time["as_of"])
    )
    assert by_time["dataset_id"] == str(match.ref.id)
    assert (by_time["collection"], by_time["run"]) == (match.collection, match.ref.run)
    assert (
        match.timespan is not None and (by_time["begin"], by_time["end"]) == match.timespan.to_iso()
    )
    assert by_time["uri"] == repo.butler.uri(match.ref)
    assert by_time["data_id"] == {"instrument": "SimCam", "detector": 94}
    by_exposure = get(repo, "/find-calibration", **base, data_id=data_id, exposure=exposure_id(1))
    assert by_exposure["dataset_id"] == by_time["dataset_id"]
    assert by_exposure["lookup"]["physical_filter"] == "r_57"  # what the exposure implies
    assert by_exposure["lookup"]["exposure"] == exposure_id(1)
    assert by_exposure["lookup"]["detector"] == 94  # typed, though given as text


def test_find_calibration_as_of(repo: Repo) -> None:
    params = {
        "dataset_type": "bias",
        "collections": [BIAS],
        "data_id": ["instrument=SimCam", "detector=95"],
        "time": "2024-11-26T01:00:00",
    }
    response = repo.client.get(PREFIX + "/find-calibration", params=params)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "dataset_not_found"
    then = get(repo, "/find-calibration", **params, as_of=repo.before_cut)
    assert then["as_of"] == repo.before_cut
    assert (then["begin"], then["end"]) == ("2024-11-01T00:00:00", None)
    assert then["run"] == BIAS_RUN and then["data_id"]["detector"] == 95


def test_calibration_pairs(repo: Repo) -> None:
    body = {
        "dataset_type": "bias",
        "collections": [BIAS],
        "data_id": {"instrument": "SimCam"},
        "pairs": [
            {"exposure": exposure_id(1), "detector": 94},
            {"exposure": exposure_id(1), "detector": 95},  # cut out of 2024-11-26
            {"time": "2024-11-28T00:00:00", "detector": 95},
            {"time": "2024-10-01T00:00:00", "detector": 94},  # before any bias
        ],
    }
    response = repo.client.post(PREFIX + "/find-calibration/pairs", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    found = [item["found"] for item in answer["items"]]
    assert found[1] is None and found[3] is None
    assert found[0]["data_id"] == {"instrument": "SimCam", "detector": 94}
    assert (found[2]["begin"], found[2]["end"]) == (CUT[1], None)  # what remains after the cut
    assert {f["run"] for f in (found[0], found[2])} == {BIAS_RUN}
    assert answer["items"][0]["lookup"]["physical_filter"] == "r_57"
    then = repo.client.post(
        PREFIX + "/find-calibration/pairs", json={**body, "as_of": repo.before_cut}
    ).json()
    assert then["as_of"] == repo.before_cut
    assert then["items"][1]["found"]["begin"] == "2024-11-01T00:00:00"  # not yet cut then


# --- paging --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "limit", "key"),
    [
        ("/collections", {}, 3, "name"),
        ("/dataset-types", {}, 2, "name"),
        ("/datasets", {"dataset_type": "raw", "collections": [RAW]}, 4, "dataset_id"),
        ("/dimension-records/detector", {}, 100, "id"),
    ],
)
def test_pages_cover_the_result_without_overlap(
    repo: Repo, path: str, params: dict[str, Any], limit: int, key: str
) -> None:
    whole = get(repo, path, limit=MAX_LIMIT, **params)["items"]
    pages = every_page(repo, path, limit, **params)
    assert len(pages) >= 2 and all(len(p) == limit for p in pages[:-1])
    joined = [item[key] for page in pages for item in page]
    assert joined == [item[key] for item in whole]  # same order, nothing twice, nothing left
    assert len(set(joined)) == len(joined)
    again = get(repo, path, limit=limit, offset=limit, **params)["items"]
    assert again == pages[1]  # a page asked again is the same page


# --- errors --------------------------------------------------------------------------------------

DEFECTS = {"dataset_type": "defects", "collections": [CALIB], "data_id": ["instrument=SimCam"]}
DETECTOR_94 = {"data_id": ["instrument=SimCam", "detector=94"]}
RAWS = {"dataset_type": "raw", "collections": [RAW]}
PAIR = {"dataset_type": "bias", "collections": [BIAS], "pairs": [{"time": "2024-11-28"}]}

BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("GET", "/datasets", {**RAWS, "collections": ["no/such"]}, 404, "unknown_collection"),
    ("GET", "/datasets", {**RAWS, "dataset_type": "nope"}, 404, "unknown_dataset_type"),
    ("GET", "/datasets", {**RAWS, "where": "detector = "}, 400, "bad_expression"),
    ("GET", "/datasets", {**RAWS, "where": "nosuch = 1"}, 400, "bad_expression"),
    ("GET", "/datasets", {"collections": [RAW]}, 422, "bad_input"),
    ("GET", "/dimension-records/exposure", {"where": "((("}, 400, "bad_expression"),
    ("GET", "/dimension-records/nope", {}, 404, "unknown_dimension"),
    ("GET", "/collections", {"limit": MAX_LIMIT + 1}, 422, "bad_input"),
    ("GET", "/collections", {"limit": 0}, 422, "bad_input"),
    ("GET", "/collections", {"offset": -1}, 422, "bad_input"),
    ("GET", "/collections", {"type": "FOLDER"}, 400, "collection_type"),
    ("GET", "/find-calibration", {**DEFECTS, "time": "last tuesday"}, 400, "bad_timespan"),
    (
        "GET",
        "/find-calibration",
        {**DEFECTS, "time": "2024-11-26", "as_of": "x"},
        400,
        "bad_timespan",
    ),
    ("GET", "/find-calibration", {**DEFECTS, "data_id": ["detector"]}, 400, "bad_data_id"),
    ("GET", "/find-calibration", {**DEFECTS, "time": "2024-11-26"}, 400, "bad_data_id"),
    ("GET", "/find-calibration", {**DEFECTS, "exposure": "one"}, 422, "bad_input"),
    ("GET", "/find-calibration", DEFECTS, 400, "bad_input"),
    (
        "GET",
        "/find-calibration",
        {**DEFECTS, "exposure": 1, "time": "2024-11-26"},
        400,
        "bad_input",
    ),
    (
        "GET",
        "/find-calibration",
        {**DEFECTS, **DETECTOR_94, "exposure": 7},
        404,
        "record_not_found",
    ),
    (
        "GET",
        "/find-calibration",
        {**DEFECTS, **DETECTOR_94, "collections": ["no/such"], "time": "2024-11-26"},
        404,
        "unknown_collection",
    ),
    ("GET", "/no/such/endpoint", {}, 404, "not_found"),
    ("POST", "/find-calibration/pairs", {**PAIR, "pairs": [{"detector": 94}]}, 400, "bad_input"),
    ("POST", "/find-calibration/pairs", {**PAIR, "pairs": [{"exposure": 1}]}, 400, "bad_data_id"),
    ("POST", "/find-calibration/pairs", {**PAIR, "collections": [RAW]}, 400, "collection_type"),
    ("POST", "/find-calibration/pairs", {**PAIR, "pairs": []}, 422, "bad_input"),
    ("POST", "/find-calibration/pairs", {**PAIR, "extra": 1}, 422, "bad_input"),
]


def check_error(response: Any, status: int, code: str) -> str:
    """The error contract: the status, ``{"error": {"code", "message"}}``, one line, no
    traceback. Returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message and "\n" not in message
    assert "Traceback" not in response.text and 'File "' not in response.text
    return str(message)


@pytest.mark.parametrize(("method", "path", "params", "status", "code"), BAD_REQUESTS)
def test_bad_requests_are_json_errors_with_the_cli_codes(
    repo: Repo, method: str, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    if method == "GET":
        response = repo.client.get(PREFIX + path, params=params)
    else:
        response = repo.client.post(PREFIX + path, json=params)
    check_error(response, status, code)


def test_a_malformed_where_is_the_parsers_reason(repo: Repo) -> None:
    with pytest.raises(ExpressionError) as parsed:
        parse("detector IN (1, ")
    response = repo.client.get(PREFIX + "/datasets", params={**RAWS, "where": "detector IN (1, "})
    assert check_error(response, 400, "bad_expression") == str(parsed.value)


def test_limits_are_refused_not_clamped(repo: Repo) -> None:
    response = repo.client.get(PREFIX + "/collections", params={"limit": 10**6})
    assert "limit" in check_error(response, 422, "bad_input")
    pairs = [{"time": "2024-11-28", "detector": 94}] * (MAX_PAIRS + 1)
    response = repo.client.post(
        PREFIX + "/find-calibration/pairs",
        json={**PAIR, "data_id": {"instrument": "SimCam"}, "pairs": pairs},
    )
    message = check_error(response, 422, "bad_input")
    assert "pairs" in message and str(MAX_PAIRS) in message
    response = repo.client.post(
        PREFIX + "/find-calibration/pairs",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    check_error(response, 422, "bad_input")


def test_an_unexpected_error_is_500_json_without_the_traceback(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_api(repo.butler.root)
    with TestClient(app, raise_server_exceptions=False) as client:

        def broken() -> None:
            raise RuntimeError('boom\nTraceback (most recent call last):\n  File "x.py"')

        monkeypatch.setattr(app.state.butler.registry, "query_dataset_types", broken)
        response = client.get(PREFIX + "/dataset-types")
    check_error(response, 500, "internal")
    assert "boom" not in response.text


# --- the OpenAPI description --------------------------------------------------------------------


def test_openapi_lists_every_endpoint(repo: Repo) -> None:
    document = get(repo, "/openapi.json")
    operations = {
        (method.upper(), path): op
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    }
    assert set(operations) == {
        ("GET", f"{PREFIX}/collections"),
        ("GET", f"{PREFIX}/dataset-types"),
        ("GET", f"{PREFIX}/datasets"),
        ("GET", f"{PREFIX}/dimension-records/{{element}}"),
        ("GET", f"{PREFIX}/find-calibration"),
        ("POST", f"{PREFIX}/find-calibration/pairs"),
    }
    for op in operations.values():
        assert op["summary"] and op["description"]
        assert "200" in op["responses"]
        error = op["responses"]["400"]["content"]["application/json"]["schema"]
        assert error["$ref"].endswith("/ErrorResponse")
    limit = next(
        p
        for p in operations[("GET", f"{PREFIX}/collections")]["parameters"]
        if p["name"] == "limit"
    )
    assert limit["schema"]["maximum"] == MAX_LIMIT
    assert repo.client.get(PREFIX + "/docs").status_code == 200
    json.dumps(document)  # plain JSON all through


# --- read-only by construction -------------------------------------------------------------------


def test_the_read_only_session_refuses_writes(butler: Butler, backend: str) -> None:
    reader = open_read_only(butler.root)
    try:
        with pytest.raises(DatabaseError) as refused:
            reader.registry.register_run("written/through/the/api")
        if backend == "postgresql":  # read_only_sql_transaction, from the server itself
            cause = refused.value.__cause__
            assert isinstance(cause, sqlalchemy.exc.DBAPIError)
            assert getattr(cause.orig, "sqlstate", None) == "25006"
        else:
            assert "readonly" in str(refused.value)
        table = reader.registry.collections._collection
        with pytest.raises(DatabaseError), reader.registry.db.transaction(write=False) as conn:
            conn.execute(table.insert().values(name="raw/sql", type="RUN"))
        with pytest.raises(ReadOnlyError):
            reader.register_dataset_type(DatasetType("flat", ("instrument",), "Json"))
        assert [c.name for c in reader.registry.query_collections()] == []  # reads still work
    finally:
        reader.close()
    assert butler.registry.query_collections() == []  # nothing was written


def test_a_read_only_sqlite_registry_is_never_created(tmp_path: Path) -> None:
    butler = Butler.create(tmp_path / "repo", actor="pytest")
    butler.close()
    (tmp_path / "repo" / "registry.sqlite3").unlink()
    with pytest.raises(DatabaseError):
        open_read_only(tmp_path / "repo")
    assert not (tmp_path / "repo" / "registry.sqlite3").exists()
