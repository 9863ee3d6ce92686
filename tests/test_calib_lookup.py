"""Every calibration that applies to an exposure and detector, in one call (and in bulk).

On SQLite and PostgreSQL; the command through the real ``obsbus`` script.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from services.butler import Butler
from services.calib.curated import write_curated_calibrations
from services.core.timespan import Timespan
from services.ingest.raws import RawIngester, find_raw_files
from services.instruments.simcam import SimCam, write_exposure
from services.registry.calib_lookup import applicable_types, find_all_calibrations
from services.registry.datasets import DatasetType
from tests.support.cli import run_script

CALIB = ["SimCam/calib"]
EXPOSURES = (1, 2, 3)  # SimCam exposures 2024112500001-3, in r_57 (the generator's default)
CURATED = {"camera", "crosstalk", "defects", "transmission_filter"}


def exposure_id(seq: int) -> int:
    return 2024112500000 + seq


@pytest.fixture
def repo(empty_butler: Butler, tmp_path: Path) -> Butler:
    """SimCam's curated calibrations, a bias type with nothing certified, three exposures."""
    SimCam.register(empty_butler.registry)
    write_curated_calibrations(empty_butler, SimCam, "v1")
    bias = DatasetType("bias", ("instrument", "detector"), "Json", is_calibration=True)
    empty_butler.registry.register_dataset_type(bias)
    landing = tmp_path / "landing"
    for seq in EXPOSURES:
        write_exposure(landing, seq, f"2024-11-26T01:{seq:02d}:00", detectors=[94, 95])
    outcomes = list(RawIngester(empty_butler).ingest(find_raw_files([landing])))
    assert {o.status for o in outcomes} == {"ingested"}
    return empty_butler


def with_exposure(butler: Butler, seq: int, detector: int) -> tuple[dict[str, Any], Timespan]:
    ((values, ts),) = butler.registry.with_exposures(
        [{"instrument": "SimCam", "exposure": exposure_id(seq), "detector": detector}]
    )
    return values, ts


def test_all_types_for_one_exposure_and_detector(repo: Butler) -> None:
    (found,) = find_all_calibrations(repo.registry, CALIB, [with_exposure(repo, 1, 94)])
    assert set(found.found) == CURATED | {"bias"}
    assert found.found["bias"] is None  # registered, nothing certified: "none", no failure
    for name in CURATED:
        match = found.found[name]
        single = repo.registry.find_calibration(name, found.data_id, CALIB, found.timespan)
        assert match is not None and single is not None and match.ref == single.ref
    curve = found.found["transmission_filter"]
    assert curve is not None and curve.ref.data_id["physical_filter"] == "r_57"
    defects = found.found["defects"]
    assert defects is not None and defects.ref.data_id["detector"] == 94


def test_types_the_data_id_cannot_satisfy_are_left_out(repo: Butler) -> None:
    only_instrument = applicable_types(repo.registry, ["instrument"])
    assert [t.name for t in only_instrument] == ["camera", "crosstalk"]
    (found,) = find_all_calibrations(
        repo.registry, CALIB, [({"instrument": "SimCam"}, Timespan.at("2024-03-01"))]
    )
    assert set(found.found) == {"camera", "crosstalk"}
    (early,) = find_all_calibrations(
        repo.registry, CALIB, [({"instrument": "SimCam"}, Timespan.at("2023-01-01"))]
    )
    assert early.found == {"camera": None, "crosstalk": None}


@contextmanager
def counted_statements(butler: Butler) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    engine = butler.registry.db.engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", count)


def test_bulk_cost_does_not_grow_with_the_number_of_pairs(repo: Butler) -> None:
    few = [with_exposure(repo, 1, 94)]
    many = [with_exposure(repo, seq, det) for seq in EXPOSURES for det in (94, 95)]
    find_all_calibrations(repo.registry, CALIB, few)  # warm the registry's caches first
    with counted_statements(repo) as one_pair:
        find_all_calibrations(repo.registry, CALIB, few)
    with counted_statements(repo) as six_pairs:
        results = find_all_calibrations(repo.registry, CALIB, many)
    assert len(six_pairs) == len(one_pair), (len(one_pair), len(six_pairs))
    defects = {
        (r.data_id["detector"], m.ref.data_id["detector"])
        for r in results
        if (m := r.found["defects"]) is not None
    }
    assert defects == {(94, 94), (95, 95)}


def test_cli_find_calibrations_one_and_many(
    repo: Butler, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["exposure", "detector"])
        writer.writerows([[exposure_id(seq), det] for seq in EXPOSURES for det in (94, 95)])
    base = ["find-calibrations", repo.root, "--collections", *CALIB, "--data-id"]
    one = run_script(
        [*base, "instrument=SimCam", "detector=94", "--exposure", exposure_id(2), "--json"],
        cli_env,
        tmp_path,
    )
    assert one.code == 0, one.describe()
    rows = {r["dataset_type"]: r for r in one.rows()}
    assert set(rows) == CURATED | {"bias"}
    assert rows["bias"]["found"] == "none" and rows["bias"].get("dataset_id") is None
    assert rows["transmission_filter"]["physical_filter"] == "r_57"
    assert rows["camera"]["begin"] == "2024-06-01T00:00:00" and rows["camera"]["found"] == "yes"
    many = run_script([*base, "instrument=SimCam", "--pairs", pairs, "--json"], cli_env, tmp_path)
    assert many.code == 0, many.describe()
    assert len(many.rows()) == 6 * len(CURATED | {"bias"})
    assert {r["found"] for r in many.rows() if r["dataset_type"] != "bias"} == {"yes"}
    text = run_script([*base, "instrument=SimCam", "detector=94", "--time", "2024-03-01"],
                      cli_env, tmp_path)  # fmt: skip
    assert text.code == 0 and "none" in text.out, text.describe()
    unknown = run_script(
        [*base, "instrument=SimCam", "detector=94", "--exposure", "2024112599999"],
        cli_env,
        tmp_path,
    )
    assert "no exposure 2024112599999" in unknown.error()
