"""Curated calibrations (instrument signature data): the tree, its checks and its writes.

Repository tests run on SQLite and on PostgreSQL (``empty_butler``); tree-reading tests need no
repository. Validity ranges and lookups are asserted exactly, against the file names of the
tree SimCam ships.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from astropy.table import Table

from services.butler import Butler
from services.calib import curated
from services.calib.curated import CuratedWrite, write_curated_calibrations
from services.calib.curated_tree import CURATED_TYPES, default_source, read_tree
from services.cli import curated_commands
from services.core.errors import (
    CollectionError,
    CollectionExistsError,
    InputError,
    UnregisteredDataIdError,
)
from services.core.timespan import Timespan
from services.instruments.hsc import HyperSuprimeCam
from services.instruments.simcam import SimCam
from services.registry.collections import CollectionType

SHIPPED = default_source(SimCam)
T1 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T2 = datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC)


@pytest.fixture
def simcam(empty_butler: Butler) -> Butler:
    SimCam.register(empty_butler.registry)
    return empty_butler


def stored_files(butler: Butler) -> list[Path]:
    return sorted(p for p in butler.datastore.root.rglob("*") if p.is_file())


def collections(butler: Butler) -> dict[str, CollectionType]:
    return {c.name: c.type for c in butler.registry.query_collections()}


def ranges(butler: Butler, collection: str, dataset_type: str) -> dict[Any, list[Any]]:
    """{data ID value: sorted [(begin ISO, end ISO), ...]} of one type in a collection."""
    out: dict[Any, list[Any]] = {}
    for ref, ts in butler.registry.query_calibrations(collection, dataset_type):
        key = {k: v for k, v in ref.data_id.items() if k != "instrument"}
        out.setdefault(tuple(key.values()) or None, []).append(ts.to_iso())
    return {k: sorted(v, key=lambda r: r[0]) for k, v in out.items()}


def at(iso: str) -> Timespan:
    return Timespan.at(iso)


def copy_tree(tmp_path: Path) -> Path:
    dest = tmp_path / "curated"
    shutil.copytree(SHIPPED, dest)
    return dest


# --- the tree -----------------------------------------------------------------------------------


def test_shipped_trees_read_with_ranges_from_file_names() -> None:
    tree = read_tree(SimCam, SHIPPED)
    by_place = {(f.curated_type.name, f.folder, f.timespan.to_iso()) for f in tree.files}
    assert ("defects", "R22_S11", ("2024-01-01T00:00:00", "2024-06-01T00:00:00")) in by_place
    assert ("defects", "R22_S11", ("2024-06-01T00:00:00", None)) in by_place
    assert ("defects", "R22_S12", ("2024-01-01T00:00:00", "2024-03-15T12:00:00")) in by_place
    assert ("crosstalk", ".", ("2024-01-01T00:00:00", None)) in by_place
    assert ("camera", ".", ("2024-01-01T00:00:00", "2024-06-01T00:00:00")) in by_place
    filters = {f.folder for f in tree.files if f.curated_type.name == "transmission_filter"}
    assert filters == {"u_24", "g_6", "r_57", "i_39", "z_20", "y_10"}
    assert {t.name for t in tree.types} == set(CURATED_TYPES)

    hsc = read_tree(HyperSuprimeCam, default_source(HyperSuprimeCam))
    assert {f.curated_type.name for f in hsc.files} == {
        "defects",
        "transmission_filter",
        "crosstalk",
    }
    one_53 = sorted(f.timespan.to_iso() for f in hsc.files if f.folder == "1_53")
    assert one_53 == [("2013-11-01T00:00:00", "2015-01-01T00:00:00"), ("2015-01-01T00:00:00", None)]
    assert {f.data_id["detector"] for f in hsc.files if f.curated_type.name == "defects"} == {
        0,
        37,
        50,
        100,
    }


def _set_ecsv_meta(path: Path, **meta: Any) -> None:
    table = Table.read(path, format="ascii.ecsv")
    table.meta.update(meta)
    table.write(path, format="ascii.ecsv", overwrite=True)


def _set_yaml(path: Path, **values: Any) -> None:
    content = yaml.safe_load(path.read_text())
    content.update(values)
    path.write_text(yaml.safe_dump(content))


DEFECTS = Path("SimCam/defects/R22_S11/2024-06-01T00:00:00.ecsv")
CURVE = Path("SimCam/transmission_filter/r_57/2024-09-01T00:00:00.ecsv")
CAMERA = Path("SimCam/camera/2024-06-01T00:00:00.yaml")


@pytest.mark.parametrize(
    ("relative", "change"),
    [
        (DEFECTS, lambda p: _set_ecsv_meta(p, detector="R22_S12")),
        (DEFECTS, lambda p: _set_ecsv_meta(p, detector_id=95)),
        (DEFECTS, lambda p: _set_ecsv_meta(p, instrument="HSC")),
        (DEFECTS, lambda p: _set_ecsv_meta(p, calibration_type="bias")),
        (DEFECTS, lambda p: _set_ecsv_meta(p, physical_filter="r_57")),
        (CURVE, lambda p: _set_ecsv_meta(p, physical_filter="g_6")),
        (CAMERA, lambda p: _set_yaml(p, instrument="LSSTCam")),
        (CAMERA, lambda p: _set_yaml(p, calibration_type="crosstalk")),
        (CAMERA, lambda p: _set_yaml(p, detector="R22_S11")),
        (CAMERA, lambda p: p.write_text("just text\n")),
        (CAMERA, lambda p: p.write_text("a: [unclosed\n")),
    ],
    ids=[
        "detector-name",
        "detector-id",
        "instrument",
        "calibration-type",
        "filter-on-detector-type",
        "filter",
        "yaml-instrument",
        "yaml-type",
        "detector-on-instrument-type",
        "not-a-mapping",
        "unparsable",
    ],
)
def test_metadata_must_agree_with_path(tmp_path: Path, relative: Path, change: Any) -> None:
    source = copy_tree(tmp_path)
    change(source / relative)
    with pytest.raises(InputError) as err:
        read_tree(SimCam, source)
    assert str(source / relative) in str(err.value)


def test_metadata_may_use_lsst_style_keys(tmp_path: Path) -> None:
    source = copy_tree(tmp_path)
    path = source / DEFECTS
    table = Table.read(path, format="ascii.ecsv")
    table.meta.clear()
    table.meta.update({"INSTRUME": "SimCam", "OBSTYPE": "defects", "DETECTOR": 94})
    table.write(path, format="ascii.ecsv", overwrite=True)
    assert len(read_tree(SimCam, source).files) == len(read_tree(SimCam, SHIPPED).files)
    _set_ecsv_meta(path, DETECTOR=95)
    with pytest.raises(InputError, match=re.escape(str(path))):
        read_tree(SimCam, source)


def _rename(source: Path, old: str, new: str) -> Path:
    (source / new).parent.mkdir(parents=True, exist_ok=True)
    return (source / old).rename(source / new)


@pytest.mark.parametrize(
    ("arrange", "named"),
    [
        (lambda s: (s / "SimCam/flat").mkdir(), "SimCam/flat"),
        (lambda s: _rename(s, "SimCam/defects/R01_S00", "SimCam/defects/R99_S99"), "R99_S99"),
        (
            lambda s: _rename(s, "SimCam/transmission_filter/g_6", "SimCam/transmission_filter/k"),
            "transmission_filter/k",
        ),
        (
            lambda s: _rename(
                s,
                "SimCam/defects/R01_S00/2024-01-01T00:00:00.ecsv",
                "SimCam/defects/R01_S00/x.ecsv",
            ),
            "R01_S00/x.ecsv",
        ),
        (
            lambda s: _rename(
                s,
                "SimCam/defects/R01_S00/2024-01-01T00:00:00.ecsv",
                "SimCam/defects/R01_S00/2024-01-01T00:00:00.yaml",
            ),
            "R01_S00/2024-01-01T00:00:00.yaml",
        ),
        (
            lambda s: shutil.copy(
                s / "SimCam/defects/R01_S00/2024-01-01T00:00:00.ecsv",
                s / "SimCam/defects/R01_S00/2024-01-01.ecsv",
            ),
            "R01_S00/2024-01-01",
        ),
        (
            lambda s: _rename(
                s, "SimCam/crosstalk/2024-01-01T00:00:00.yaml", "SimCam/crosstalk/a/2024.yaml"
            ),
            "crosstalk/a",
        ),
        (
            lambda s: _rename(
                s,
                "SimCam/defects/R01_S00/2024-01-01T00:00:00.ecsv",
                "SimCam/defects/2024-01-01T00:00:00.ecsv",
            ),
            "defects/2024-01-01T00:00:00.ecsv",
        ),
    ],
    ids=[
        "unknown-type",
        "unknown-detector",
        "unknown-filter",
        "not-a-time",
        "wrong-extension",
        "same-start",
        "subfolder-for-instrument-type",
        "file-in-detector-type-folder",
    ],
)
def test_malformed_tree_refused_naming_the_place(tmp_path: Path, arrange: Any, named: str) -> None:
    source = copy_tree(tmp_path)
    arrange(source)
    with pytest.raises(InputError, match=re.escape(named)):
        read_tree(SimCam, source)


def test_tree_hidden_files_ignored_and_missing_tree_refused(tmp_path: Path) -> None:
    source = copy_tree(tmp_path)
    (source / "SimCam/defects/R01_S00/.DS_Store").write_text("x")
    assert len(read_tree(SimCam, source).files) == len(read_tree(SimCam, SHIPPED).files)
    with pytest.raises(InputError, match="no curated calibrations for HSC"):
        read_tree(HyperSuprimeCam, source)


# --- writing ------------------------------------------------------------------------------------


def write(butler: Butler, label: str, when: datetime = T1, **kw: Any) -> CuratedWrite:
    return write_curated_calibrations(butler, SimCam, label, when=when, **kw)


def test_write_makes_run_collection_chain_and_exact_ranges(simcam: Butler) -> None:
    result = write(simcam, "A")
    assert result.run == "SimCam/calib/A/curated/20250102T030405Z"
    assert result.collection == "SimCam/calib/A"
    # One run per start time in the tree (a run holds one defects per detector).
    assert result.runs == [
        f"{result.run}/{start}"
        for start in ("20240101T000000", "20240315T120000", "20240601T000000", "20240901T000000")
    ]
    found = collections(simcam)
    assert found[result.run] is CollectionType.CHAINED
    assert simcam.registry.get_chain(result.run) == result.runs
    assert all(found[run] is CollectionType.RUN for run in result.runs)
    assert found["SimCam/calib/A"] is CollectionType.CALIBRATION
    assert found["SimCam/calib"] is CollectionType.CHAINED
    assert simcam.registry.get_chain("SimCam/calib") == ["SimCam/calib/A"]

    assert ranges(simcam, "SimCam/calib/A", "defects") == {
        (0,): [("2024-01-01T00:00:00", None)],
        (94,): [("2024-01-01T00:00:00", "2024-06-01T00:00:00"), ("2024-06-01T00:00:00", None)],
        (95,): [("2024-01-01T00:00:00", "2024-03-15T12:00:00"), ("2024-03-15T12:00:00", None)],
    }
    curves = ranges(simcam, "SimCam/calib/A", "transmission_filter")
    assert curves[("r_57",)] == [
        ("2024-01-01T00:00:00", "2024-09-01T00:00:00"),
        ("2024-09-01T00:00:00", None),
    ]
    assert curves[("g_6",)] == [("2024-01-01T00:00:00", None)]
    assert len(curves) == 6
    assert ranges(simcam, "SimCam/calib/A", "crosstalk") == {None: [("2024-01-01T00:00:00", None)]}
    assert ranges(simcam, "SimCam/calib/A", "camera") == {
        None: [("2024-01-01T00:00:00", "2024-06-01T00:00:00"), ("2024-06-01T00:00:00", None)]
    }
    # Every file certified once, every dataset in the new run, and each type a calibration.
    assert len(result.certified) == len(read_tree(SimCam, SHIPPED).files) == 15
    assert {ref.run for ref, _, _ in result.certified} == set(result.runs)
    by_start = {ts.begin: ref.run for ref, ts, _ in result.certified}
    assert by_start[at("2024-03-15T12:00:00").begin] == f"{result.run}/20240315T120000"
    for name in CURATED_TYPES:
        assert simcam.registry.get_dataset_type(name).is_calibration
    assert len(stored_files(simcam)) == 15


def test_lookups_either_side_of_a_boundary_read_the_right_file(simcam: Butler) -> None:
    result = write(simcam, "A")
    source_of = {ref.id: path for ref, _, path in result.certified}
    registry = simcam.registry

    def lookup(dataset_type: str, when: str, **data_id: Any) -> Any:
        match = registry.find_calibration(
            dataset_type, {"instrument": "SimCam", **data_id}, ["SimCam/calib"], at(when)
        )
        assert match is not None and match.collection == "SimCam/calib/A"
        return source_of[match.ref.id], simcam.get(match.ref)

    path, table = lookup("defects", "2024-05-31T23:59:59.999", detector=94)
    assert path.name == "2024-01-01T00:00:00.ecsv"
    assert len(table) == 2 and table.meta["detector"] == "R22_S11"
    path, table = lookup("defects", "2024-06-01T00:00:00", detector=94)
    assert path.name == "2024-06-01T00:00:00.ecsv"
    assert list(table["x0"]) == list(Table.read(path, format="ascii.ecsv")["x0"])
    assert len(table) == 3
    assert lookup("defects", "2024-03-15T11:59:59", detector=95)[0].name.startswith("2024-01-01")
    assert lookup("defects", "2024-03-15T12:00:00", detector=95)[0].name.startswith("2024-03-15")
    assert (
        registry.find_calibration(
            "defects", {"instrument": "SimCam", "detector": 94}, ["SimCam/calib"], at("2023-12-31")
        )
        is None
    )  # before the first file: nothing

    path, curve = lookup("transmission_filter", "2024-08-31T23:59:59", physical_filter="r_57")
    assert path.name == "2024-01-01T00:00:00.ecsv" and max(curve["throughput"]) < 0.91
    path, curve = lookup("transmission_filter", "2024-09-01T00:00:00", physical_filter="r_57")
    assert path.name == "2024-09-01T00:00:00.ecsv" and max(curve["throughput"]) > 0.91
    assert str(curve["wavelength"].unit) == "nm"

    path, old = lookup("camera", "2024-05-31T23:59:59")
    _, new = lookup("camera", "2024-06-01T00:00:00")
    assert old == yaml.safe_load(path.read_text())

    def gain(camera: Any) -> float:
        r22_s11 = next(d for d in camera["detectors"] if d["name"] == "R22_S11")
        return float(next(a for a in r22_s11["amplifiers"] if a["name"] == "C01")["gain"])

    assert (gain(old), gain(new)) == (1.55, 1.62)
    _, crosstalk = lookup("crosstalk", "2030-01-01T00:00:00")
    assert crosstalk["calibration_type"] == "crosstalk"


def test_second_label_new_run_and_collection_chain_sees_newest(simcam: Butler) -> None:
    a = write(simcam, "A", T1)
    files_after_a = stored_files(simcam)
    b = write(simcam, "B", T2)
    assert a.run != b.run and b.run == "SimCam/calib/B/curated/20250203T040506Z"
    found = collections(simcam)
    runs = sorted(n for n, t in found.items() if t is CollectionType.RUN)
    assert runs == sorted([*a.runs, *b.runs]) and len(runs) == 8
    assert not set(a.runs) & set(b.runs)
    assert simcam.registry.get_chain("SimCam/calib") == ["SimCam/calib/B", "SimCam/calib/A"]
    assert b.chain_children == ["SimCam/calib/B", "SimCam/calib/A"]

    key = {"instrument": "SimCam", "detector": 94}
    via_chain = simcam.registry.find_calibration("defects", key, ["SimCam/calib"], at("2024-07-01"))
    assert via_chain is not None
    assert (via_chain.collection, via_chain.ref.run) == ("SimCam/calib/B", b.runs[2])
    assert via_chain.ref.id in {ref.id for ref, _, _ in b.certified}
    in_a = simcam.registry.find_calibration("defects", key, ["SimCam/calib/A"], at("2024-07-01"))
    assert in_a is not None and in_a.ref.run == a.runs[2] and in_a.ref.id != via_chain.ref.id

    # A is intact: same ranges, same files, still readable.
    assert ranges(simcam, "SimCam/calib/A", "defects") == ranges(
        simcam, "SimCam/calib/B", "defects"
    )
    assert set(files_after_a) <= set(stored_files(simcam))
    assert len(stored_files(simcam)) == 30
    for ref, _, path in a.certified:
        if ref.dataset_type.storage_class == "StructuredDataDict":
            assert simcam.get(ref) == yaml.safe_load(path.read_text())


def test_reused_label_refused_naming_collection_nothing_written(simcam: Butler) -> None:
    write(simcam, "A", T1)
    before, files = collections(simcam), stored_files(simcam)
    with pytest.raises(CollectionExistsError, match=re.escape("'SimCam/calib/A'")):
        write(simcam, "A", T2)
    assert collections(simcam) == before
    assert stored_files(simcam) == files
    assert simcam.registry.get_chain("SimCam/calib") == ["SimCam/calib/A"]


def test_bad_file_refused_naming_it_nothing_written(simcam: Butler, tmp_path: Path) -> None:
    write(simcam, "A", T1)
    before, files = collections(simcam), stored_files(simcam)
    source = copy_tree(tmp_path)
    _set_ecsv_meta(source / DEFECTS, detector="R22_S12")
    with pytest.raises(InputError, match=re.escape(str(source / DEFECTS))):
        write(simcam, "B", T2, source=source)
    assert collections(simcam) == before
    assert stored_files(simcam) == files


def test_failure_inside_the_transaction_leaves_nothing(empty_butler: Butler) -> None:
    SimCam.register(empty_butler.registry)
    # <I>/calib is taken by a non-chain: discovered only after files and rows were written.
    empty_butler.registry.register_collection("SimCam/calib", CollectionType.TAGGED)
    before = collections(empty_butler)
    with pytest.raises(CollectionError, match="SimCam/calib"):
        write(empty_butler, "A")
    assert collections(empty_butler) == before
    assert stored_files(empty_butler) == []
    assert empty_butler.registry.query_dataset_types() == []


def test_refusals_before_writing(empty_butler: Butler) -> None:
    with pytest.raises(UnregisteredDataIdError, match="register-instrument"):
        write(empty_butler, "A")
    SimCam.register(empty_butler.registry)
    for label in ("", "a/b", " A", ".."):
        with pytest.raises(InputError, match="invalid label"):
            write(empty_butler, label)
    assert collections(empty_butler) == {}


def test_hsc_shipped_tree(empty_butler: Butler) -> None:
    HyperSuprimeCam.register(empty_butler.registry)
    result = write_curated_calibrations(empty_butler, HyperSuprimeCam, "v1", when=T1)
    assert result.run == "HSC/calib/v1/curated/20250102T030405Z"
    assert [r.rsplit("/", 1)[1] for r in result.runs] == [
        "20130101T000000",
        "20131101T000000",
        "20150101T000000",
    ]
    assert ranges(empty_butler, "HSC/calib/v1", "defects")[(0,)] == [
        ("2013-11-01T00:00:00", "2015-01-01T00:00:00"),
        ("2015-01-01T00:00:00", None),
    ]
    match = empty_butler.registry.find_calibration(
        "transmission_filter",
        {"instrument": "HSC", "physical_filter": "NB0921"},
        ["HSC/calib"],
        at("2020-01-01"),
    )
    assert match is not None
    curve = empty_butler.get(match.ref)
    assert curve.meta["FILTER"] == "NB0921"
    crosstalk = empty_butler.registry.find_calibration(
        "crosstalk", {"instrument": "HSC"}, ["HSC/calib"], at("2020-01-01")
    )
    assert crosstalk is not None
    assert empty_butler.stored_file(crosstalk.ref).path.endswith(".json")
    assert len(empty_butler.get(crosstalk.ref)["coefficients"]) == 4


# --- the command --------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="obsbus")
    common = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    curated_commands.add_commands(sub, common)
    args = parser.parse_args(argv)
    args.actor = "pytest " + " ".join(argv)
    result: int = args.func(args)
    return result


def test_cli_writes_and_refuses_reused_label(
    simcam: Butler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(simcam.root)
    assert run_cli(["write-curated-calibrations", repo, "SimCam", "--label", "A"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (chained as SimCam/calib/A/curated/" in out
    assert "into SimCam/calib/A;" in out and "SimCam/calib: SimCam/calib/A" in out
    source = copy_tree(tmp_path)
    argv = ["write-curated-calibrations", repo, "SimCam", "--label", "B", "--source", str(source)]
    assert run_cli([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15
    row = next(r for r in rows if r.get("detector") == 94 and r["end"] is None)
    assert row["begin"] == "2024-06-01T00:00:00" and row["source"] == str(source / DEFECTS)
    assert simcam.registry.get_chain("SimCam/calib") == ["SimCam/calib/B", "SimCam/calib/A"]
    with pytest.raises(CollectionExistsError, match="SimCam/calib/A"):
        run_cli(["write-curated-calibrations", repo, "SimCam", "--label", "A"])


def test_file_changed_after_checking_refused(
    simcam: Butler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = copy_tree(tmp_path)
    original = curated.read_tree

    def read_then_edit(instrument: Any, root: Path) -> Any:
        tree = original(instrument, root)
        with (root / "SimCam" / DEFECTS.relative_to("SimCam")).open("a") as stream:
            stream.write("1 2 3 4\n")
        return tree

    monkeypatch.setattr(curated, "read_tree", read_then_edit)
    with pytest.raises(InputError, match="changed while being written"):
        write(simcam, "A", source=source)
    assert collections(simcam) == {}
    assert stored_files(simcam) == []
