"""The ``obsbus`` command as a user runs it: every subcommand, its output and its errors.

Most tests call ``services.cli.main.main(argv)`` in-process (fast) on both registries: the
``db_settings`` fixture makes each of them run once on SQLite and once on PostgreSQL, where
``create`` gets ``--db URL --db-namespace NS``. A few tests run the installed console script
in a subprocess, proving the entry point and its exit statuses end to end.

Known bugs are ``xfail(strict=True)`` tests: they start passing (and so fail) once fixed.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import sqlalchemy
import yaml
from astropy.table import Table

from services.butler import Butler
from services.core.timespan import now_ns, parse_time, time_to_ns
from services.datastore.transaction import TRANSFER_MODES
from tests.support.cli import (
    ERROR_PREFIX,
    Cli,
    Result,
    db_args,
    finish_script,
    run_script,
    start_script,
)
from tests.support.records import add_exposure

CAM = "tests.support.dummycam.DummyCam"
CAM_CHANGED = "tests.support.cli.DummyCamRepurposed"
INSTR = "instrument=DummyCam"
RUN1 = "bias/run1"
RUN2 = "bias/run2"
CALIB = "DummyCam/calib"
JAN = ("--begin-date", "2024-01-01", "--end-date", "2024-02-01")
JAN_BEGIN, JAN_END = "2024-01-01T00:00:00", "2024-02-01T00:00:00"
YAML_FORMATTER = "services.datastore.formatters.YamlFormatter"
ALL_COMMANDS = (
    "create",
    "migrate",
    "register-instrument",
    "register-dataset-type",
    "ingest-files",
    "certify-calibrations",
    "decertify-calibrations",
    "find-calibration",
    "collection-chain",
    "freeze-collection",
    "query-collections",
    "query-datasets",
    "query-dimension-records",
    "query-dataset-types",
    "get",
)


# Overrides the two-backend ``backend`` fixture, for bugs that do not depend on the database.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


# --- fixtures and helpers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Repo:
    """A repository made through the CLI, with the ids of the datasets ingested into it."""

    path: Path
    ids: dict[tuple[str, int], str]  # (run, detector) -> dataset_id


@pytest.fixture(autouse=True)
def _no_db_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # OBSBUS_DB / OBSBUS_DB_NAMESPACE would silently redirect every repository.
    monkeypatch.delenv("OBSBUS_DB", raising=False)
    monkeypatch.delenv("OBSBUS_DB_NAMESPACE", raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.fixture
def repo(tmp_path: Path, db_settings: dict[str, str | None], cli: Cli) -> Path:
    """An empty repository made with ``obsbus create`` (SQLite or PostgreSQL)."""
    path = tmp_path / "repo"
    cli("create", path, *db_args(db_settings))
    return path


@pytest.fixture
def cam_repo(repo: Path, cli: Cli) -> Path:
    """DummyCam registered and the calibration dataset type ``bias`` defined."""
    cli("register-instrument", repo, CAM)
    cli(
        "register-dataset-type",
        repo,
        "bias",
        "StructuredDataDict",
        "instrument",
        "detector",
        "--is-calibration",
    )
    return repo


@pytest.fixture
def biases(cam_repo: Path, cli: Cli, tmp_path: Path) -> Repo:
    """RUN1 holds biases of detectors 0-2 (level 100+d); RUN2 a newer bias of detector 1."""
    ids: dict[tuple[str, int], str] = {}
    for run, levels in ((RUN1, {0: 100, 1: 101, 2: 102}), (RUN2, {1: 201})):
        table = bias_table(tmp_path / run.replace("/", "_"), levels)
        for row in ingest(cli, cam_repo, "bias", run, table, "--data-id", INSTR):
            ids[(run, row["detector"])] = row["dataset_id"]
    return Repo(cam_repo, ids)


@pytest.fixture
def certified(biases: Repo, cli: Cli) -> Repo:
    """``biases`` with RUN1 certified into CALIB for January 2024."""
    cli("certify-calibrations", biases.path, RUN1, CALIB, "bias", *JAN)
    return biases


def bias_table(folder: Path, levels: Mapping[int, int], name: str = "biases.csv") -> Path:
    """One YAML bias file per detector plus a CSV table (file, detector) listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,detector"]
    for detector, level in levels.items():
        path = folder / f"bias_{detector}.yaml"
        path.write_text(yaml.safe_dump({"detector": detector, "level": level}))
        lines.append(f"{path.name},{detector}")
    table = folder / name
    table.write_text("\n".join(lines) + "\n")
    return table


def ingest(
    cli: Cli, repo: Path, dataset_type: str, run: str, table: Path, *options: object
) -> list[dict[str, Any]]:
    return cli("ingest-files", repo, dataset_type, run, table, "--json", *options).rows()


def det(detector: int) -> tuple[str, ...]:
    """``--data-id`` for one DummyCam detector (keep it last: it takes all that follows)."""
    return ("--data-id", INSTR, f"detector={detector}")


def find_fails(cli: Cli, repo: Path, *options: object) -> str:
    """The error of ``find-calibration bias --collections CALIB ...``."""
    return cli.fails("find-calibration", repo, "bias", "--collections", CALIB, *options)


def find(cli: Cli, repo: Path, *options: object) -> dict[str, Any]:
    """The single row of ``find-calibration bias --collections CALIB ... --json``."""
    rows = cli("find-calibration", repo, "bias", "--collections", CALIB, "--json", *options).rows()
    assert len(rows) == 1, rows
    return rows[0]


def get_level(cli: Cli, repo: Path, collection: str, detector: int) -> int:
    out = cli("get", repo, "bias", "--collections", collection, "--json", *det(detector)).json()
    assert out["detector"] == detector
    return int(out["level"])


def collections(cli: Cli, repo: Path) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in cli("query-collections", repo, "--json").rows()}


def datastore_files(repo: Path) -> list[Path]:
    return [p for p in (repo / "datastore").rglob("*") if p.is_file() or p.is_symlink()]


def uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    assert parsed.scheme == "file", uri
    return Path(url2pathname(parsed.path))


def add_exposures(repo: Path, *specs: tuple[int, str, str, str]) -> None:
    """Register exposures (id, begin TAI, physical_filter, observation_type); 30 s each.

    No CLI command defines exposures (ingest of raws does, elsewhere), so this uses the
    library the CLI is built on.
    """
    with Butler.open(repo, actor="pytest") as butler:
        for exposure, begin, physical_filter, observation_type in specs:
            add_exposure(
                butler.registry,
                exposure,
                begin,
                physical_filter=physical_filter,
                observation_type=observation_type,
            )


def ns_of(iso: str) -> int:
    return time_to_ns(parse_time(iso))


# --- create and migrate -----------------------------------------------------------------------


def test_create_makes_an_empty_repository(
    tmp_path: Path, db_settings: dict[str, str | None], cli: Cli
) -> None:
    path = tmp_path / "new"
    result = cli("create", path, *db_args(db_settings))
    assert result.out == f"created repository {path}\n"
    assert result.err == ""
    config = yaml.safe_load((path / "obsbus.yaml").read_text())
    assert (path / "datastore").is_dir()
    if db_settings["db"] is None:
        assert config == {}
        assert (path / "registry.sqlite3").is_file()
    else:
        assert config == {"db": db_settings["db"], "db_namespace": db_settings["db_namespace"]}
        assert not (path / "registry.sqlite3").exists()
        engine = sqlalchemy.create_engine(db_settings["db"])
        try:
            tables = sqlalchemy.inspect(engine).get_table_names(db_settings["db_namespace"])
        finally:
            engine.dispose()
        assert {"dataset", "collection", "calib_validity", "alembic_version"} <= set(tables)
    assert cli("query-collections", path, "--json").rows() == []
    assert cli("query-dataset-types", path, "--json").rows() == []
    empty = cli("query-collections", path)
    assert (empty.out, empty.err) == ("", "(no collections)\n")


def test_create_refuses_an_existing_repository(repo: Path, cli: Cli) -> None:
    message = cli.fails("create", repo)
    assert "already an obsbus repository" in message
    assert str(repo.resolve()) in message
    cli("query-collections", repo)  # the existing repository is untouched


def test_migrate_an_up_to_date_repository(repo: Path, cli: Cli, tmp_path: Path) -> None:
    assert cli("migrate", repo).out == f"repository {repo} is at the current schema\n"
    assert cli("migrate", repo).out == f"repository {repo} is at the current schema\n"
    cli("register-instrument", repo, CAM)  # still usable afterwards
    message = cli.fails("migrate", tmp_path / "nowhere")
    assert "is not an obsbus repository" in message


def test_newer_schema_is_refused(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "repo"
    cli("create", path)
    with sqlite3.connect(path / "registry.sqlite3") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    message = cli.fails("query-collections", path)
    assert "has registry schema 9999" in message
    assert "newer obsbus" in message


def test_migrate_refuses_a_newer_schema_cleanly(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "repo"
    cli("create", path)
    with sqlite3.connect(path / "registry.sqlite3") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    message = cli.fails("migrate", path)
    assert "has registry schema 9999, unknown to this obsbus" in message
    assert "newer obsbus" in message


def test_failed_create_leaves_nothing_behind(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "repo"
    assert "unsupported database 'nosuch'" in cli.fails("create", path, "--db", "nosuch://x")
    assert not path.exists()  # not even the folder the failed create made
    cli("create", path)
    cli("query-collections", path)


def test_create_with_unreachable_database_is_a_clean_error(tmp_path: Path, cli: Cli) -> None:
    url = "postgresql+psycopg://obsbus@127.0.0.1:1/obsbus"  # port 1: connection refused
    message = cli.fails("create", tmp_path / "repo", "--db", url, "--db-namespace", "t_x")
    assert message.startswith("cannot connect to the registry database at obsbus@127.0.0.1:1/")
    assert "check that the server is running" in message
    assert not (tmp_path / "repo").exists()


# --- register-instrument and register-dataset-type --------------------------------------------


def test_register_instrument_by_class_path(repo: Path, cli: Cli) -> None:
    assert cli("register-instrument", repo, CAM).out == "DummyCam: 15 new records\n"
    again = cli("register-instrument", repo, CAM)
    assert again.out == "DummyCam: already registered, unchanged\n"
    detectors = cli("query-dimension-records", repo, "detector", "--json").rows()
    assert detectors == [
        {
            "instrument": "DummyCam",
            "id": i,
            "full_name": f"D{i:02d}",
            "purpose": "science" if i < 3 else "guider",
        }
        for i in range(4)
    ]
    filters = cli("query-dimension-records", repo, "physical_filter", "--json").rows()
    assert {(f["name"], f["band"]) for f in filters} == {
        ("dummy_g", "g"),
        ("dummy_r", "r"),
        ("dummy_i", "i"),
    }
    (instrument,) = cli("query-dimension-records", repo, "instrument", "--json").rows()
    assert (instrument["name"], instrument["class_name"]) == ("DummyCam", CAM)
    assert instrument["detector_max"] == 4


def test_register_instrument_conflict_then_update(repo: Path, cli: Cli) -> None:
    cli("register-instrument", repo, CAM)
    message = cli.fails("register-instrument", repo, CAM_CHANGED)
    assert "conflicts with the registered one" in message
    assert f"class_name: '{CAM}' -> '{CAM_CHANGED}'" in message
    assert "nothing was written" in message
    guider = ["query-dimension-records", repo, "detector", "--where", "id = 3", "--json"]
    assert cli(*guider).rows()[0]["purpose"] == "guider"

    message = cli.fails("register-instrument", repo, CAM_CHANGED, "--update")
    assert "needs a reason" in message
    assert cli(*guider).rows()[0]["purpose"] == "guider"

    cli("register-instrument", repo, CAM_CHANGED, "--update", "--reason", "slot 3 refitted")
    assert cli(*guider).rows()[0]["purpose"] == "focus"
    (instrument,) = cli("query-dimension-records", repo, "instrument", "--json").rows()
    assert instrument["class_name"] == CAM_CHANGED


@SQLITE_ONLY
def test_register_instrument_update_reports_the_change(repo: Path, cli: Cli) -> None:
    cli("register-instrument", repo, CAM)
    out = cli("register-instrument", repo, CAM_CHANGED, "--update", "--reason", "refit").out
    # instrument.class_name, detector 3's and its physical detector's purpose
    assert out == "DummyCam: 3 updated records\n"
    again = cli("register-instrument", repo, CAM_CHANGED, "--update", "--reason", "refit").out
    assert again == "DummyCam: already registered, unchanged\n"


def test_register_dataset_types_and_query_them(repo: Path, cli: Cli) -> None:
    cli("register-instrument", repo, CAM)
    bias = ["bias", "StructuredDataDict", "instrument", "detector", "--is-calibration"]
    assert cli("register-dataset-type", repo, *bias).out == "dataset type bias: registered\n"
    again = cli("register-dataset-type", repo, *bias).out
    assert again == "dataset type bias: already registered, unchanged\n"
    # Required dimensions are added and put in universe order.
    cli("register-dataset-type", repo, "raw", "Image", "exposure", "detector")
    assert cli("query-dataset-types", repo, "--json").rows() == [
        {
            "name": "bias",
            "dimensions": "instrument detector",
            "storage_class": "StructuredDataDict",
            "is_calibration": True,
        },
        {
            "name": "raw",
            "dimensions": "instrument detector exposure",
            "storage_class": "Image",
            "is_calibration": False,
        },
    ]
    table = cli("query-dataset-types", repo).out.splitlines()
    assert table[0].split() == ["name", "dimensions", "storage_class", "is_calibration"]
    assert table[2].split() == ["bias", "instrument", "detector", "StructuredDataDict", "True"]

    message = cli.fails("register-dataset-type", repo, "bias", "StructuredDataDict", "instrument")
    assert "'bias' is already defined differently" in message
    assert "dimensions: ('instrument', 'detector') -> ('instrument',)" in message
    assert "is_calibration: True -> False" in message
    message = cli.fails("register-dataset-type", repo, "x", "Nope", "instrument")
    assert "unknown storage class 'Nope'" in message
    assert "StructuredDataDict" in message  # lists the known ones
    message = cli.fails("register-dataset-type", repo, "x", "Json", "telescope")
    assert "no dimension element 'telescope'" in message
    message = cli.fails("register-dataset-type", repo, "2x", "Json", "instrument")
    assert "invalid dataset type name '2x'" in message
    assert [t["name"] for t in cli("query-dataset-types", repo, "--json").rows()] == [
        "bias",
        "raw",
    ]


# --- ingest-files -----------------------------------------------------------------------------


def test_ingest_csv_with_shared_data_id(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 2: 102})
    rows = ingest(cli, cam_repo, "bias", RUN1, table, "--data-id", INSTR)
    assert [(r["file"], r["instrument"], r["detector"], r["outcome"]) for r in rows] == [
        (str(tmp_path / "in" / "bias_0.yaml"), "DummyCam", 0, "inserted"),
        (str(tmp_path / "in" / "bias_2.yaml"), "DummyCam", 2, "inserted"),
    ]
    assert list(rows[0]) == [
        "file",
        "dataset_type",
        "instrument",
        "detector",
        "run",
        "dataset_id",
        "outcome",
    ]
    assert {(r["dataset_type"], r["run"]) for r in rows} == {("bias", RUN1)}
    ids = [str(uuid.UUID(r["dataset_id"])) for r in rows]

    found = cli("query-datasets", cam_repo, "bias", "--collections", RUN1, "--json").rows()
    assert [f["dataset_id"] for f in found] == ids
    for row, detector in zip(found, (0, 2), strict=True):
        assert set(row) == {
            "dataset_type",
            "instrument",
            "detector",
            "run",
            "collection",
            "dataset_id",
            "uri",
            "formatter",
        }
        assert (row["dataset_type"], row["instrument"], row["detector"]) == (
            "bias",
            "DummyCam",
            detector,
        )
        assert (row["run"], row["collection"], row["formatter"]) == (RUN1, RUN1, YAML_FORMATTER)
        stored = uri_path(row["uri"])
        assert stored.is_relative_to((cam_repo / "datastore").resolve())
        assert yaml.safe_load(stored.read_text()) == {"detector": detector, "level": 100 + detector}
    assert collections(cli, cam_repo)[RUN1]["type"] == "RUN"

    plain = cli("ingest-files", cam_repo, "bias", RUN2, table, "--data-id", INSTR).out
    lines = plain.splitlines()
    assert lines[0].split() == [
        "file",
        "dataset_type",
        "instrument",
        "detector",
        "run",
        "dataset_id",
        "outcome",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split()[-1] for line in lines[2:]] == ["inserted", "inserted"]


def test_ingest_ecsv_table_with_data_id_columns(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    bias_table(tmp_path, {1: 101, 3: 103})  # writes the YAML files
    table = tmp_path / "files.ecsv"
    Table(
        {
            "file": ["bias_1.yaml", str(tmp_path / "bias_3.yaml")],  # relative and absolute
            "instrument": ["DummyCam", "DummyCam"],
            "detector": [1, 3],
        }
    ).write(table, format="ascii.ecsv")
    rows = ingest(cli, cam_repo, "bias", RUN1, table)
    assert [(r["detector"], r["outcome"]) for r in rows] == [(1, "inserted"), (3, "inserted")]
    assert get_level(cli, cam_repo, RUN1, 1) == 101
    assert get_level(cli, cam_repo, RUN1, 3) == 103


def test_ingest_transfer_modes(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Each --transfer into its own run: where the file ends up and what the source becomes."""
    modes = ("copy", "move", "hardlink", "symlink", "direct")
    assert set(modes) == set(TRANSFER_MODES)
    datastore = (cam_repo / "datastore").resolve()
    stored_files: list[Path] = []
    for level, transfer in enumerate(modes):
        run = f"transfer/{transfer}"
        table = bias_table(tmp_path / transfer, {1: level})
        source = (tmp_path / transfer / "bias_1.yaml").resolve()
        (row,) = ingest(
            cli, cam_repo, "bias", run, table, "--transfer", transfer, "--data-id", INSTR
        )
        assert row["outcome"] == "inserted", transfer
        (listed,) = cli("query-datasets", cam_repo, "bias", "--collections", run, "--json").rows()
        uri = cli("get", cam_repo, "bias", "--collections", run, "--uri", *det(1)).out.strip()
        assert listed["uri"] == uri, transfer
        assert get_level(cli, cam_repo, run, 1) == level, transfer
        stored = uri_path(uri)
        if transfer == "direct":
            assert uri == source.as_uri()
            assert source.is_file()
            continue
        assert stored.is_relative_to(datastore), transfer
        stored_files.append(stored)
        if transfer == "copy":
            assert source.is_file() and not stored.is_symlink()
            assert not os.path.samefile(source, stored)
        elif transfer == "move":
            assert not source.exists()
            assert stored.is_file() and not stored.is_symlink()
        elif transfer == "hardlink":
            assert not stored.is_symlink() and os.path.samefile(source, stored)
        else:
            assert stored.is_symlink() and stored.resolve() == source
    assert sorted(datastore_files(cam_repo)) == sorted(stored_files)  # nothing for "direct"


def test_ingest_repeat_with_dataid_type_run_is_a_no_op(
    cam_repo: Path, cli: Cli, tmp_path: Path
) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 1: 101, 2: 102})
    opts = ("--id-generation", "dataid_type_run", "--data-id", INSTR)
    first = ingest(cli, cam_repo, "bias", RUN1, table, *opts)
    assert [r["outcome"] for r in first] == ["inserted"] * 3
    assert all(uuid.UUID(r["dataset_id"]).version == 5 for r in first)
    # A repeat, even with --transfer move, changes nothing and leaves the sources alone.
    second = ingest(cli, cam_repo, "bias", RUN1, table, "--transfer", "move", *opts)
    assert [r["outcome"] for r in second] == ["already-present"] * 3
    assert [r["dataset_id"] for r in second] == [r["dataset_id"] for r in first]
    assert all((tmp_path / "in" / f"bias_{d}.yaml").is_file() for d in range(3))
    found = cli("query-datasets", cam_repo, "bias", "--collections", RUN1, "--json").rows()
    assert sorted(f["dataset_id"] for f in found) == sorted(r["dataset_id"] for r in first)
    assert len(datastore_files(cam_repo)) == 3
    # The same data ID in another run is another dataset.
    other = ingest(cli, cam_repo, "bias", RUN2, table, *opts)
    assert {r["dataset_id"] for r in other}.isdisjoint(r["dataset_id"] for r in first)

    # With the default (unique) ids a repeat is a second dataset for the same data ID: refused.
    message = cli.fails("ingest-files", cam_repo, "bias", RUN1, table, "--data-id", INSTR)
    assert f"run '{RUN1}' already has a bias for instrument=DummyCam,detector=0" in message
    assert len(cli("query-datasets", cam_repo, "bias", "--collections", RUN1, "--json").rows()) == 3


def test_ingest_bad_row_is_named_and_nothing_is_ingested(
    cam_repo: Path, cli: Cli, tmp_path: Path
) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 1: 101, 2: 102})
    table.write_text(table.read_text().replace("bias_2.yaml,2", "bias_2.yaml,two"))
    message = cli.fails("ingest-files", cam_repo, "bias", RUN1, table, "--data-id", INSTR)
    assert message.startswith(f"{table} row 3: ")
    assert "detector must be an integer, got 'two'" in message
    assert RUN1 not in collections(cli, cam_repo)
    assert datastore_files(cam_repo) == []
    assert all((tmp_path / "in" / f"bias_{d}.yaml").is_file() for d in range(3))


def test_ingest_unregistered_data_id_ingests_nothing(
    cam_repo: Path, cli: Cli, tmp_path: Path
) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 9: 109})
    message = cli.fails("ingest-files", cam_repo, "bias", RUN1, table, "--data-id", INSTR)
    assert "data ID value detector=9 is not registered" in message
    assert RUN1 not in collections(cli, cam_repo)
    assert datastore_files(cam_repo) == []


@SQLITE_ONLY
def test_ingest_unregistered_data_id_names_the_row(
    cam_repo: Path, cli: Cli, tmp_path: Path
) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 9: 109})
    message = cli.fails("ingest-files", cam_repo, "bias", RUN1, table, "--data-id", INSTR)
    assert message.startswith(f"{table} row 2: data ID value detector=9 is not registered")


def test_ingest_missing_file_rolls_back_moves(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    table = bias_table(tmp_path / "in", {0: 100, 1: 101, 2: 102})
    missing = tmp_path / "in" / "bias_2.yaml"
    missing.unlink()
    message = cli.fails(
        "ingest-files", cam_repo, "bias", RUN1, table, "--transfer", "move", "--data-id", INSTR
    )
    assert f"cannot ingest {missing}: no such file" in message
    # The files moved before the failure are back where they were; nothing is registered.
    assert (tmp_path / "in" / "bias_0.yaml").is_file()
    assert (tmp_path / "in" / "bias_1.yaml").is_file()
    assert datastore_files(cam_repo) == []
    assert RUN1 not in collections(cli, cam_repo)


def test_ingest_table_problems(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    def fails(table: Path) -> str:
        return cli.fails("ingest-files", cam_repo, "bias", RUN1, table, "--data-id", INSTR)

    text = tmp_path / "files.txt"
    text.write_text("file,detector\nx.yaml,1\n")
    assert fails(text) == f"{text}: the table must be .csv or .ecsv"
    no_file = tmp_path / "nofile.csv"
    no_file.write_text("path,detector\nx.yaml,1\n")
    assert fails(no_file) == f"{no_file}: no 'file' column (columns: path, detector)"
    assert fails(tmp_path / "absent.csv") == f"{tmp_path / 'absent.csv'}: no such file"
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("file\nx.yaml\n")
    message = cli.fails("ingest-files", cam_repo, "bias", RUN1, lacking)
    assert message.startswith(f"{lacking} row 1: ")
    assert "lacks instrument, detector" in message
    assert "no dataset type 'flat'" in cli.fails("ingest-files", cam_repo, "flat", RUN1, lacking)
    assert collections(cli, cam_repo) == {}


# --- certify, decertify, find-calibration -----------------------------------------------------


def test_certify_and_find_by_time(certified: Repo, cli: Cli) -> None:
    repo = certified.path
    assert collections(cli, repo)[CALIB]["type"] == "CALIBRATION"
    row = find(cli, repo, "--time", "2024-01-10T12:00:00", *det(1))
    assert set(row) == {
        "dataset_type",
        "instrument",
        "detector",
        "run",
        "collection",
        "begin",
        "end",
        "dataset_id",
        "uri",
        "formatter",
        "as_of",
    }
    assert row["dataset_id"] == certified.ids[(RUN1, 1)]
    assert (row["dataset_type"], row["instrument"], row["detector"]) == ("bias", "DummyCam", 1)
    assert (row["run"], row["collection"]) == (RUN1, CALIB)
    assert (row["begin"], row["end"]) == (JAN_BEGIN, JAN_END)
    assert row["formatter"] == YAML_FORMATTER
    assert yaml.safe_load(uri_path(row["uri"]).read_text())["level"] == 101
    assert 0 <= now_ns() - ns_of(row["as_of"]) < 600 * 10**9

    # Validity is half-open: the end instant is outside.
    message = find_fails(cli, repo, "--time", JAN_END, *det(1))
    assert message.startswith("no bias for ")
    assert CALIB in message
    # Certifying the same range again is a no-op.
    again = cli("certify-calibrations", repo, RUN1, CALIB, "bias", *JAN).out
    assert again == (
        f"certified 0 bias into {CALIB} for [{JAN_BEGIN}, {JAN_END}) (3 already certified so)\n"
    )
    # `get` can look a calibration up the same way.
    out = cli(
        "get",
        repo,
        "bias",
        "--collections",
        CALIB,
        "--time",
        "2024-01-31T23:59:59",
        "--json",
        *det(2),
    ).json()
    assert out == {"detector": 2, "level": 102}


def test_certify_output_and_unbounded_validity(biases: Repo, cli: Cli) -> None:
    repo = biases.path
    out = cli("certify-calibrations", repo, RUN1, CALIB, "bias", *JAN).out
    assert out == f"certified 3 bias into {CALIB} for [{JAN_BEGIN}, {JAN_END})\n"
    out = cli("certify-calibrations", repo, RUN2, "DummyCam/calib/forever", "bias").out
    assert out == "certified 1 bias into DummyCam/calib/forever for [-inf, +inf)\n"
    rows = cli(
        "find-calibration",
        repo,
        "bias",
        "--collections",
        "DummyCam/calib/forever",
        "--time",
        "1999-01-01",
        "--json",
        *det(1),
    ).rows()
    assert [(r["dataset_id"], r["begin"], r["end"]) for r in rows] == [
        (biases.ids[(RUN2, 1)], None, None)
    ]


def test_certify_overlap_names_the_range(certified: Repo, cli: Cli) -> None:
    repo = certified.path
    message = cli.fails(
        "certify-calibrations",
        repo,
        RUN2,
        CALIB,
        "bias",
        "--begin-date",
        "2024-01-15",
        "--end-date",
        "2024-03-01",
    )
    assert message.startswith(f"cannot certify bias into {CALIB}: overlaps ")
    assert f"instrument=DummyCam,detector=1 [{JAN_BEGIN}, {JAN_END})" in message
    assert certified.ids[(RUN1, 1)] in message
    assert "detector=0" not in message  # only the data ID that clashes
    # Nothing was written ...
    feb = ("--time", "2024-02-15", *det(1))
    cli.fails("find-calibration", repo, "bias", "--collections", CALIB, *feb)
    # ... and an adjacent range is fine (validity ranges are half-open).
    out = cli(
        "certify-calibrations",
        repo,
        RUN2,
        CALIB,
        "bias",
        "--begin-date",
        "2024-02-01",
        "--end-date",
        "2024-03-01",
    ).out
    assert out.startswith("certified 1 bias")
    assert find(cli, repo, *feb)["dataset_id"] == certified.ids[(RUN2, 1)]


def test_certify_refusals(biases: Repo, cli: Cli, tmp_path: Path) -> None:
    repo = biases.path
    cli("register-dataset-type", repo, "note", "StructuredDataDict", "instrument", "detector")
    ingest(cli, repo, "note", "notes", bias_table(tmp_path / "n", {1: 1}), "--data-id", INSTR)
    message = cli.fails("certify-calibrations", repo, "notes", CALIB, "note", *JAN)
    assert "dataset type 'note' is not a calibration type" in message
    message = cli.fails("certify-calibrations", repo, "notes", CALIB, "bias", *JAN)
    assert message == "run 'notes' has no bias datasets"
    message = cli.fails("certify-calibrations", repo, "nosuch", CALIB, "bias", *JAN)
    assert "no collection 'nosuch'" in message
    message = cli.fails(
        "certify-calibrations",
        repo,
        RUN1,
        CALIB,
        "bias",
        "--begin-date",
        "2024-02-01",
        "--end-date",
        "2024-01-01",
    )
    assert message.startswith("empty timespan: begin 2024-02-01T00:00:00 is not before end")
    message = cli.fails("certify-calibrations", repo, RUN1, RUN2, "bias", *JAN)
    assert f"collection '{RUN2}' already exists as RUN, not CALIBRATION" in message
    assert collections(cli, repo)[RUN2]["type"] == "RUN"


@SQLITE_ONLY
def test_refused_certify_creates_no_collection(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    cli("register-dataset-type", cam_repo, "note", "StructuredDataDict", "instrument", "detector")
    ingest(cli, cam_repo, "note", "notes", bias_table(tmp_path, {1: 1}), "--data-id", INSTR)
    message = cli.fails("certify-calibrations", cam_repo, "notes", CALIB, "note", *JAN)
    assert "is not a calibration type" in message
    assert CALIB not in collections(cli, cam_repo)


def test_decertify_and_reproduce_an_earlier_answer_with_as_of(certified: Repo, cli: Cli) -> None:
    repo = certified.path
    jan10 = ("--time", "2024-01-10T12:00:00")
    before = find(cli, repo, *jan10, *det(1))
    assert before["dataset_id"] == certified.ids[(RUN1, 1)]

    out = cli(
        "decertify-calibrations",
        repo,
        CALIB,
        "bias",
        "--begin-date",
        "2024-01-05",
        "--end-date",
        "2024-01-20",
        *det(1),
    ).out
    assert out == (
        "decertified [2024-01-05T00:00:00, 2024-01-20T00:00:00) from 1 validity ranges in "
        f"{CALIB}\n"
    )
    message = find_fails(cli, repo, *jan10, *det(1))
    assert message.startswith("no bias for ")
    # Other data IDs keep their whole range; detector 1 keeps the two remainders.
    other = find(cli, repo, *jan10, *det(0))
    assert (other["begin"], other["end"]) == (JAN_BEGIN, JAN_END)
    head = find(cli, repo, "--time", "2024-01-02", *det(1))
    tail = find(cli, repo, "--time", "2024-01-25", *det(1))
    assert (head["begin"], head["end"]) == (JAN_BEGIN, "2024-01-05T00:00:00")
    assert (tail["begin"], tail["end"]) == ("2024-01-20T00:00:00", JAN_END)
    assert head["dataset_id"] == tail["dataset_id"] == certified.ids[(RUN1, 1)]

    # --as-of the moment of the first answer gives that answer again, exactly.
    again = find(cli, repo, *jan10, "--as-of", before["as_of"], *det(1))
    assert again == before
    # Before anything was certified there was nothing.
    message = find_fails(cli, repo, *jan10, "--as-of", "2000-01-01", *det(1))
    assert message.startswith("no bias for ")

    # Without --data-id every data ID is cut (detector 1 only in its tail piece).
    out = cli("decertify-calibrations", repo, CALIB, "bias", "--begin-date", "2024-01-25").out
    assert out == f"decertified [2024-01-25T00:00:00, +inf) from 3 validity ranges in {CALIB}\n"
    for detector in (0, 1, 2):
        find_fails(cli, repo, "--time", "2024-01-26", *det(detector))
    cut = find(cli, repo, "--time", "2024-01-22", *det(2))
    assert (cut["begin"], cut["end"]) == (JAN_BEGIN, "2024-01-25T00:00:00")
    # A data ID missing a dimension is refused.
    message = cli.fails("decertify-calibrations", repo, CALIB, "bias", "--data-id", "detector=1")
    assert "lacks instrument" in message


@pytest.fixture
def flats(cam_repo: Path, cli: Cli, tmp_path: Path) -> Repo:
    """Flats of detector 1 in dummy_r and dummy_g certified for January; three exposures."""
    repo = cam_repo
    cli(
        "register-dataset-type",
        repo,
        "flat",
        "StructuredDataDict",
        "instrument",
        "detector",
        "physical_filter",
        "--is-calibration",
    )
    folder = tmp_path / "flats"
    folder.mkdir()
    lines = ["file,detector,physical_filter"]
    for band in ("r", "g"):
        (folder / f"flat_{band}.yaml").write_text(yaml.safe_dump({"band": band}))
        lines.append(f"flat_{band}.yaml,1,dummy_{band}")
    (folder / "flats.csv").write_text("\n".join(lines) + "\n")
    rows = ingest(cli, repo, "flat", "flat/run", folder / "flats.csv", "--data-id", INSTR)
    ids = {(r["physical_filter"], r["detector"]): r["dataset_id"] for r in rows}
    cli("certify-calibrations", repo, "flat/run", CALIB, "flat", *JAN)
    add_exposures(
        repo,
        (100, "2024-01-10T10:00:00", "dummy_r", "science"),
        (101, "2024-01-10T11:00:00", "dummy_g", "bias"),
        (102, "2024-03-01T00:00:00", "dummy_r", "science"),
    )
    return Repo(repo, ids)


def test_find_calibration_for_an_exposure(flats: Repo, cli: Cli) -> None:
    repo = flats.path

    def find_flat(*options: object) -> list[dict[str, Any]]:
        return cli(
            "find-calibration", repo, "flat", "--collections", CALIB, "--json", *options
        ).rows()

    # The exposure supplies its timespan and its filter.
    (r,) = find_flat("--exposure", "100", *det(1))
    (g,) = find_flat("--exposure", "101", *det(1))
    assert (r["physical_filter"], r["dataset_id"]) == ("dummy_r", flats.ids[("dummy_r", 1)])
    assert (g["physical_filter"], g["dataset_id"]) == ("dummy_g", flats.ids[("dummy_g", 1)])
    assert (r["begin"], r["end"], r["collection"]) == (JAN_BEGIN, JAN_END, CALIB)

    base = ("find-calibration", repo, "flat", "--collections", CALIB)
    message = cli.fails(*base, "--exposure", "102", *det(1))
    assert message.startswith("no flat for ")
    message = cli.fails(*base, "--exposure", "999", *det(1))
    assert message == "no exposure 999 of DummyCam with a timespan is registered"
    message = cli.fails(*base, "--exposure", "100", "--data-id", "detector=1")
    assert message == "--exposure needs --data-id instrument=NAME"
    message = cli.fails(*base, *det(1))
    assert message == "give --time, --exposure or --pairs"


def test_find_calibration_pairs_in_bulk(flats: Repo, cli: Cli, tmp_path: Path) -> None:
    repo = flats.path
    base = ("find-calibration", repo, "flat", "--collections", CALIB, "--json")
    by_exposure = tmp_path / "pairs.csv"
    by_exposure.write_text("exposure,detector\n100,1\n101,1\n102,1\n")
    rows = cli(*base, "--pairs", by_exposure, "--data-id", INSTR).rows()
    assert [(r["exposure"], r["detector"], r["dataset_id"]) for r in rows] == [
        (100, 1, flats.ids[("dummy_r", 1)]),
        (101, 1, flats.ids[("dummy_g", 1)]),
        (102, 1, None),
    ]
    assert [r["physical_filter"] for r in rows] == ["dummy_r", "dummy_g", "dummy_r"]
    assert (rows[0]["begin"], rows[0]["end"], rows[0]["collection"]) == (
        JAN_BEGIN,
        JAN_END,
        CALIB,
    )
    assert (rows[0]["run"], rows[0]["dataset_type"]) == ("flat/run", "flat")

    by_time = tmp_path / "pairs.ecsv"
    Table(
        {
            "time": ["2024-01-15T00:00:00", "2023-12-31T23:59:59", "2024-01-31T00:00:00"],
            "instrument": ["DummyCam"] * 3,
            "detector": [1, 1, 1],
            "physical_filter": ["dummy_g", "dummy_r", "dummy_r"],
        }
    ).write(by_time, format="ascii.ecsv")
    rows = cli(*base, "--pairs", by_time).rows()
    assert [(r["time"], r["dataset_id"]) for r in rows] == [
        ("2024-01-15T00:00:00", flats.ids[("dummy_g", 1)]),
        ("2023-12-31T23:59:59", None),
        ("2024-01-31T00:00:00", flats.ids[("dummy_r", 1)]),
    ]

    bad = tmp_path / "bad.csv"
    bad.write_text("detector\n1\n")
    message = cli.fails(*base, "--pairs", bad, "--data-id", INSTR)
    assert message == f"{bad}: every row needs an exposure or a time column"
    message = cli.fails(
        "find-calibration",
        repo,
        "flat",
        "--collections",
        CALIB,
        "flat/run",
        "--pairs",
        by_exposure,
        "--data-id",
        INSTR,
    )
    assert "bulk calibration lookups search CALIBRATION collections only" in message


@SQLITE_ONLY
def test_find_calibration_pairs_without_instrument(flats: Repo, cli: Cli, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("exposure,detector\n100,1\n")
    message = cli.fails(
        "find-calibration", flats.path, "flat", "--collections", CALIB, "--pairs", pairs
    )
    assert message.startswith(f"{pairs} row 1: an exposure lookup needs an instrument")
    pairs.write_text("exposure,detector\n100,1\nlast,1\n")
    message = cli.fails(
        "find-calibration",
        flats.path,
        "flat",
        "--collections",
        CALIB,
        "--pairs",
        pairs,
        "--data-id",
        INSTR,
    )
    assert message == f"{pairs} row 2: exposure must be an integer, got 'last'"


# --- collection-chain and freeze-collection ---------------------------------------------------


def test_collection_chain_modes(certified: Repo, cli: Cli) -> None:
    repo = certified.path
    chain = "bias/chain"

    def chain_(*args: str) -> str:
        return cli("collection-chain", repo, chain, *args).out

    assert chain_(RUN1) == f"{chain}: {RUN1}\n"  # redefine is the default
    assert chain_(RUN2, "--mode", "extend") == f"{chain}: {RUN1}, {RUN2}\n"
    assert chain_(CALIB, "--mode", "prepend") == f"{chain}: {CALIB}, {RUN1}, {RUN2}\n"
    assert chain_(RUN1, "--mode", "remove") == f"{chain}: {CALIB}, {RUN2}\n"
    assert chain_(CALIB, "--mode", "extend") == f"{chain}: {RUN2}, {CALIB}\n"  # moves to end
    assert chain_(RUN2, RUN1, "--mode", "redefine") == f"{chain}: {RUN2}, {RUN1}\n"

    listed = collections(cli, repo)
    assert listed[chain] == {
        "name": chain,
        "type": "CHAINED",
        "children": f"{RUN2},{RUN1}",
        "frozen_at": None,
        "doc": None,
    }
    assert {name: row["type"] for name, row in listed.items()} == {
        CALIB: "CALIBRATION",
        chain: "CHAINED",
        RUN1: "RUN",
        RUN2: "RUN",
    }
    assert "children" not in listed[RUN1]
    # Searching the chain finds detector 1 in RUN2 first.
    assert get_level(cli, repo, chain, 1) == 201
    assert get_level(cli, repo, chain, 0) == 100

    assert "no collection 'nosuch'" in cli.fails("collection-chain", repo, chain, "nosuch")
    message = cli.fails("collection-chain", repo, RUN1, RUN2)
    assert f"collection '{RUN1}' already exists as RUN, not CHAINED" in message
    assert chain_("--mode", "redefine") == f"{chain}: (empty)\n"
    assert collections(cli, repo)[chain]["children"] == ""


def test_collection_chain_cycle_is_refused(biases: Repo, cli: Cli) -> None:
    repo = biases.path
    cli("collection-chain", repo, "inner", RUN1)
    cli("collection-chain", repo, "outer", "inner", RUN2)
    message = cli.fails("collection-chain", repo, "inner", "outer", "--mode", "extend")
    assert message == "adding 'outer' to chain 'inner' would make a cycle"
    message = cli.fails("collection-chain", repo, "selfish", "selfish")
    assert message == "adding 'selfish' to chain 'selfish' would make a cycle"
    listed = collections(cli, repo)
    assert listed["inner"]["children"] == RUN1  # unchanged
    assert "selfish" not in listed  # the refused command created nothing


def test_freeze_collection(certified: Repo, cli: Cli, tmp_path: Path) -> None:
    repo = certified.path
    before = now_ns()
    assert cli("freeze-collection", repo, CALIB).out == f"collection {CALIB} is frozen\n"
    frozen_at = collections(cli, repo)[CALIB]["frozen_at"]
    assert before <= ns_of(frozen_at) <= now_ns()
    assert collections(cli, repo)[RUN2]["frozen_at"] is None
    cli("freeze-collection", repo, CALIB)  # again: no change
    assert collections(cli, repo)[CALIB]["frozen_at"] == frozen_at

    feb = ("--begin-date", "2024-02-01", "--end-date", "2024-03-01")
    message = cli.fails("certify-calibrations", repo, RUN2, CALIB, "bias", *feb)
    assert message.startswith(f"collection '{CALIB}' is frozen since {frozen_at} TAI")
    assert "cannot certify into it" in message
    message = cli.fails("decertify-calibrations", repo, CALIB, "bias", *JAN)
    assert "cannot decertify from it" in message
    # Reading is unaffected.
    row = find(cli, repo, "--time", "2024-01-10", *det(1))
    assert (row["begin"], row["end"]) == (JAN_BEGIN, JAN_END)

    cli("freeze-collection", repo, RUN2)
    table = bias_table(tmp_path / "late", {2: 202})
    message = cli.fails("ingest-files", repo, "bias", RUN2, table, "--data-id", INSTR)
    assert "cannot add datasets" in message
    cli("collection-chain", repo, "chain", RUN1)
    cli("freeze-collection", repo, "chain")
    assert "cannot change its chain" in cli.fails("collection-chain", repo, "chain", RUN2)
    assert "no collection 'nosuch'" in cli.fails("freeze-collection", repo, "nosuch")


# --- queries ----------------------------------------------------------------------------------


def test_query_datasets_where(biases: Repo, cli: Cli) -> None:
    repo = biases.path

    def detectors(where: str, *collections_: str) -> list[tuple[str, int]]:
        rows = cli(
            "query-datasets",
            repo,
            "bias",
            "--collections",
            *(collections_ or (RUN1,)),
            "--where",
            where,
            "--json",
        ).rows()
        return [(r["run"], r["detector"]) for r in rows]

    assert detectors("detector IN (0..1)") == [(RUN1, 0), (RUN1, 1)]
    assert detectors("detector > 0 AND NOT detector = 2") == [(RUN1, 1)]
    assert detectors("detector.full_name = 'D02'") == [(RUN1, 2)]
    assert detectors("instrument = 'DummyCam' AND detector = 1", RUN1, RUN2) == [
        (RUN1, 1),
        (RUN2, 1),
    ]
    assert detectors("detector = 3") == []
    empty = cli("query-datasets", repo, "bias", "--collections", RUN1, "--where", "detector = 3")
    assert (empty.out, empty.err) == ("", "(no datasets)\n")

    lines = cli("query-datasets", repo, "bias", "--collections", RUN2).out.splitlines()
    assert lines[0].split() == [
        "dataset_type",
        "instrument",
        "detector",
        "run",
        "collection",
        "dataset_id",
        "uri",
        "formatter",
    ]
    assert len(lines) == 3
    assert lines[2].split()[:6] == ["bias", "DummyCam", "1", RUN2, RUN2, biases.ids[(RUN2, 1)]]

    message = cli.fails(
        "query-datasets", repo, "bias", "--collections", RUN1, "--where", "detector >"
    )
    assert (
        message
        == "bad --where expression at column 11: expected a value after '>', got end of input"
    )
    message = cli.fails(
        "query-datasets", repo, "bias", "--collections", RUN1, "--where", "detector = 1 AND )"
    )
    assert message.startswith("bad --where expression at column 18: ")
    message = cli.fails(
        "query-datasets", repo, "bias", "--collections", RUN1, "--where", "exposure = 5"
    )
    assert message == "bias has no dimension 'exposure'; its dimensions: instrument, detector"
    message = cli.fails(
        "query-datasets", repo, "bias", "--collections", RUN1, "--where", "detector.colour = 5"
    )
    assert message == "detector has no field 'colour'"


def test_query_datasets_where_type_mismatch(biases: Repo, cli: Cli) -> None:
    message = cli.fails(
        "query-datasets", biases.path, "bias", "--collections", RUN1, "--where", "detector = 'x'"
    )
    assert message == (
        "bad --where expression at column 12: detector is an integer, not the string 'x'"
    )
    message = cli.fails(
        "query-dimension-records", biases.path, "detector", "--where", "purpose IN ('guider', 3)"
    )
    assert message.endswith("purpose is a string, not the integer 3")


def test_query_datasets_find_first(biases: Repo, cli: Cli) -> None:
    repo = biases.path
    cli("collection-chain", repo, "bias/chain", RUN2, RUN1)

    def found(*options: str) -> list[tuple[int, str, str]]:
        rows = cli("query-datasets", repo, "bias", "--json", *options).rows()
        return [(r["detector"], r["collection"], r["dataset_id"]) for r in rows]

    ids = biases.ids
    assert found("--collections", "bias/chain") == [
        (1, RUN2, ids[(RUN2, 1)]),
        (0, RUN1, ids[(RUN1, 0)]),
        (1, RUN1, ids[(RUN1, 1)]),
        (2, RUN1, ids[(RUN1, 2)]),
    ]
    assert found("--collections", "bias/chain", "--find-first") == [
        (1, RUN2, ids[(RUN2, 1)]),
        (0, RUN1, ids[(RUN1, 0)]),
        (2, RUN1, ids[(RUN1, 2)]),
    ]
    assert found("--collections", RUN1, RUN2, "--find-first") == [
        (0, RUN1, ids[(RUN1, 0)]),
        (1, RUN1, ids[(RUN1, 1)]),
        (2, RUN1, ids[(RUN1, 2)]),
    ]
    first = found("--collections", "bias/chain", "--find-first", "--where", "detector = 1")
    assert first == [(1, RUN2, ids[(RUN2, 1)])]


def test_query_datasets_in_a_calibration_collection(certified: Repo, cli: Cli) -> None:
    rows = cli(
        "query-datasets",
        certified.path,
        "bias",
        "--collections",
        CALIB,
        "--where",
        "detector != 0",
        "--json",
    ).rows()
    assert [(r["detector"], r["run"], r["collection"], r["dataset_id"]) for r in rows] == [
        (1, RUN1, CALIB, certified.ids[(RUN1, 1)]),
        (2, RUN1, CALIB, certified.ids[(RUN1, 2)]),
    ]


def test_query_dimension_records_where(cam_repo: Path, cli: Cli) -> None:
    add_exposures(
        cam_repo,
        (100, "2024-01-10T10:00:00", "dummy_r", "science"),
        (101, "2024-01-10T11:00:00", "dummy_g", "bias"),
    )

    def records(element: str, *where: str) -> list[dict[str, Any]]:
        options = ("--where", *where) if where else ()
        return cli("query-dimension-records", cam_repo, element, "--json", *options).rows()

    (bias,) = records("exposure", "observation_type = 'bias'")
    assert (bias["id"], bias["physical_filter"], bias["obs_id"]) == (101, "dummy_g", "DummyCam_101")
    assert (bias["begin"], bias["end"]) == ("2024-01-10T11:00:00", "2024-01-10T11:00:30")
    assert "timespan" not in bias
    assert [r["id"] for r in records("exposure", "exposure = 100")] == [100]
    assert [r["id"] for r in records("exposure", "exposure_time > 10 AND id < 101")] == [100]
    (night,) = records("day_obs")
    assert (night["id"], night["begin"], night["end"]) == (
        20240110,
        "2024-01-10T00:00:00",
        "2024-01-11T00:00:00",
    )
    assert [r["id"] for r in records("detector", "purpose = 'guider'")] == [3]
    assert records("visit") == []
    empty = cli("query-dimension-records", cam_repo, "visit")
    assert (empty.out, empty.err) == ("", "(no visit records)\n")
    plain = cli("query-dimension-records", cam_repo, "band").out.splitlines()
    assert [line.strip() for line in plain] == ["name", "----", "g", "i", "r"]

    message = cli.fails("query-dimension-records", cam_repo, "detector", "--where", "colour = 1")
    assert message == "detector has no field 'colour'; fields: instrument, id, full_name, purpose"
    message = cli.fails("query-dimension-records", cam_repo, "telescope")
    assert message.startswith("no dimension element 'telescope'; known: instrument, band")
    message = cli.fails("query-dimension-records", cam_repo, "exposure", "--where", "id IN (")
    assert message.startswith("bad --where expression at column 8: ")


# --- get --------------------------------------------------------------------------------------


def test_get_uri_output_printed_and_json(biases: Repo, cli: Cli, tmp_path: Path) -> None:
    repo = biases.path
    where = ("--collections", RUN1, *det(1))
    expected = {"detector": 1, "level": 101}

    uri = cli("get", repo, "bias", "--uri", *where).out
    assert uri.endswith("\n") and uri.count("\n") == 1
    assert (
        uri.strip()
        == cli(
            "query-datasets",
            repo,
            "bias",
            "--collections",
            RUN1,
            "--where",
            "detector = 1",
            "--json",
        ).rows()[0]["uri"]
    )
    assert yaml.safe_load(uri_path(uri.strip()).read_text()) == expected

    target = tmp_path / "copy.yaml"
    assert cli("get", repo, "bias", "--output", target, *where).out == f"wrote {target}\n"
    assert yaml.safe_load(target.read_text()) == expected

    printed = cli("get", repo, "bias", *where).out
    assert yaml.safe_load(printed) == expected
    assert json.loads(cli("get", repo, "bias", "--json", *where).out) == expected

    message = cli.fails("get", repo, "bias", "--collections", RUN1, *det(3))
    assert message.startswith("no bias for ")
    assert "'detector': 3" in message and message.endswith(f" in {RUN1}")  # typed, not '3'
    message = cli.fails("get", repo, "bias.nope", *where)
    assert message == "YamlFormatter has no component 'nope' (supported: none)"
    message = cli.fails("get", repo, "bias", "--collections", RUN1, "--data-id", INSTR)
    assert "lacks detector" in message


@SQLITE_ONLY
def test_get_output_into_a_missing_folder(biases: Repo, cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder" / "copy.yaml"
    message = cli.fails(
        "get", biases.path, "bias", "--collections", RUN1, "--output", target, *det(1)
    )
    assert message == (
        f"cannot write {target}: the folder {target.parent} does not exist; create it first"
    )
    assert not (tmp_path / "no").exists()
    message = cli.fails(
        "get", biases.path, "bias", "--collections", RUN1, "--output", tmp_path, *det(1)
    )
    assert message.startswith(f"--output {tmp_path} is a folder")


def test_get_a_table_dataset(cam_repo: Path, cli: Cli, tmp_path: Path) -> None:
    cli("register-dataset-type", cam_repo, "refcat", "AstropyTable", "instrument")
    Table({"ra": [10.5, 11.25], "dec": [-30.0, -31.5]}).write(
        tmp_path / "refcat.ecsv", format="ascii.ecsv"
    )
    (tmp_path / "refcats.csv").write_text("file\nrefcat.ecsv\n")
    ingest(cli, cam_repo, "refcat", "refcats", tmp_path / "refcats.csv", "--data-id", INSTR)
    where = ("--collections", "refcats", "--data-id", INSTR)
    assert json.loads(cli("get", cam_repo, "refcat", "--json", *where).out) == [
        {"ra": 10.5, "dec": -30.0},
        {"ra": 11.25, "dec": -31.5},
    ]
    lines = cli("get", cam_repo, "refcat", *where).out.splitlines()
    assert lines[0].split() == ["ra", "dec"]
    assert lines[2].split() == ["10.5", "-30.0"]
    (row,) = cli("query-datasets", cam_repo, "refcat", *where[:2], "--json").rows()
    assert row["formatter"] == "services.datastore.formatters.EcsvFormatter"
    assert uri_path(row["uri"]).suffix == ".ecsv"


# --- errors: one line, exit status 1, no traceback unless --debug -----------------------------

ArgvBuilder = Callable[[Path], list[object]]


class ErrorCase(NamedTuple):
    argv: ArgvBuilder  # the command line, given the repository
    fragments: list[str]  # what the one-line message must contain
    id: str


def _table_with_unregistered_detector(repo: Path) -> list[object]:
    table = bias_table(repo.parent / "unregistered", {7: 107})
    return ["ingest-files", repo, "bias", "bias/run3", table, "--data-id", INSTR]


ERROR_CASES: list[ErrorCase] = [
    ErrorCase(
        lambda r: ["query-collections", r.parent / "nowhere"],
        ["is not an obsbus repository (no obsbus.yaml)", "nowhere", "`obsbus create REPO`"],
        id="repo-does-not-exist",
    ),
    ErrorCase(
        lambda r: ["query-datasets", r, "dark", "--collections", RUN1],
        ["no dataset type 'dark'", "register-dataset-type"],
        id="unknown-dataset-type",
    ),
    ErrorCase(
        lambda r: ["get", r, "dark", "--collections", RUN1, *det(1)],
        ["no dataset type 'dark'"],
        id="get-unknown-dataset-type",
    ),
    ErrorCase(
        lambda r: ["query-datasets", r, "bias", "--collections", RUN1, "bias/nosuch"],
        ["no collection 'bias/nosuch'", "query-collections"],
        id="unknown-collection",
    ),
    ErrorCase(
        lambda r: [
            "find-calibration",
            r,
            "bias",
            "--collections",
            "nosuch",
            "--time",
            "2024-01-10",
            *det(1),
        ],
        ["no collection 'nosuch'"],
        id="find-unknown-collection",
    ),
    ErrorCase(
        lambda r: ["query-datasets", r, "bias", "--collections", RUN1, "--where", "detector = = 1"],
        ["bad --where expression at column 12"],
        id="bad-where",
    ),
    ErrorCase(
        _table_with_unregistered_detector,
        ["data ID value detector=7 is not registered", "register it first"],
        id="data-id-not-registered",
    ),
    ErrorCase(
        lambda r: [
            "register-dataset-type",
            r,
            "bias",
            "Json",
            "instrument",
            "detector",
            "--is-calibration",
        ],
        ["'bias' is already defined differently", "'StructuredDataDict' -> 'Json'"],
        id="conflicting-dataset-type",
    ),
    ErrorCase(
        lambda r: ["register-instrument", r, "NoSuchCam"],
        ["no such instrument 'NoSuchCam'", "import path of an Instrument class"],
        id="unknown-instrument",
    ),
    ErrorCase(
        lambda r: ["register-instrument", r, "tests.support.records.add_exposure"],
        ["'tests.support.records.add_exposure' is not an obsbus Instrument class"],
        id="not-an-instrument",
    ),
    ErrorCase(
        lambda r: ["get", r, "bias", "--collections", RUN1, "--data-id", "detector"],
        ["data ID item 'detector' is not of the form key=value"],
        id="malformed-data-id",
    ),
    ErrorCase(
        lambda r: ["get", r, "bias", "--collections", RUN1, "--data-id", INSTR, "detector=one"],
        ["data ID value detector must be an integer, got 'one'"],
        id="data-id-wrong-type",
    ),
    ErrorCase(
        lambda r: [
            "find-calibration",
            r,
            "bias",
            "--collections",
            CALIB,
            "--time",
            "soon",
            *det(1),
        ],
        ["cannot read 'soon' as a time"],
        id="bad-time",
    ),
    ErrorCase(
        lambda r: ["decertify-calibrations", r, RUN1, "bias"],
        [f"collection '{RUN1}' is RUN, not CALIBRATION"],
        id="decertify-a-run",
    ),
    ErrorCase(
        lambda r: ["create", r],
        ["is already an obsbus repository"],
        id="create-over-a-repo",
    ),
]


def test_errors_are_one_line(biases: Repo, cli: Cli) -> None:
    """Every case: exit 1, one ``obsbus: error:`` line naming the problem, nothing on stdout."""
    problems: list[str] = []
    for case in ERROR_CASES:
        name, fragments = case.id, case.fragments
        result = cli.run(*case.argv(biases.path))
        try:
            message = result.error()
        except AssertionError as err:
            problems.append(f"[{name}] {err}")
            continue
        missing = [f for f in fragments if f not in message]
        if missing or result.out:
            problems.append(f"[{name}] lacks {missing} or prints to stdout\n{result.describe()}")
    assert not problems, "\n\n".join(problems)


def test_debug_adds_the_traceback(tmp_path: Path, cli: Cli) -> None:
    result = cli.run("query-collections", tmp_path / "nowhere", "--debug")
    assert result.code == 1
    assert result.err.startswith("Traceback (most recent call last):")
    assert "services.core.errors.RepoNotFoundError" in result.err
    last = result.err.splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "is not an obsbus repository" in last


def test_debug_before_the_command(tmp_path: Path, cli: Cli) -> None:
    result = cli.run("--debug", "query-collections", tmp_path / "nowhere")
    assert result.code == 1
    assert result.err.startswith("Traceback (most recent call last):")
    # The nested `simcam generate`, with --debug before or after it; and without it.
    bad = ("simcam", "generate", tmp_path / "out", "--exposures", "0")
    for argv in (("--debug", *bad), (*bad, "--debug")):
        result = cli.run(*argv)
        assert result.code == 1, result.describe()
        assert result.err.startswith("Traceback (most recent call last):"), result.describe()
    assert cli.fails(*bad).startswith("--exposures must be between 1 and 99999")


def test_help_lists_every_command(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.code == 0, result.describe()
    assert result.out.startswith("usage: obsbus")
    listed = set(re.findall(r"^    ([a-z-]+)", result.out, re.MULTILINE))
    assert set(ALL_COMMANDS) <= listed, set(ALL_COMMANDS) - listed


def test_usage_errors_exit_2(repo: Path, cli: Cli) -> None:
    result = cli.run("collection-chain", repo, "chain", "--mode", "append")
    assert result.code == 2
    assert "invalid choice: 'append'" in result.err
    result = cli.run(
        "find-calibration",
        repo,
        "bias",
        "--collections",
        CALIB,
        "--time",
        "2024",
        "--exposure",
        "5",
    )
    assert result.code == 2
    assert "not allowed with argument" in result.err


# --- the real console script ------------------------------------------------------------------


@pytest.fixture
def script_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = dict(cli_env)
    env.pop("OBSBUS_DB", None)
    env.pop("OBSBUS_DB_NAMESPACE", None)
    return env


def test_console_script_end_to_end(
    tmp_path: Path, db_settings: dict[str, str | None], script_env: dict[str, str]
) -> None:
    def obsbus(*args: object) -> Result:
        result = run_script(args, script_env, tmp_path)
        assert result.code == 0, result.describe()
        return result

    created = obsbus("create", "repo", *db_args(db_settings))
    assert (created.out, created.err) == ("created repository repo\n", "")
    # The instrument is named by class path: importable through PYTHONPATH from cli_env.
    assert obsbus("register-instrument", "repo", CAM).out == "DummyCam: 15 new records\n"
    found = obsbus(
        "query-dimension-records", "repo", "detector", "--where", "purpose = 'guider'", "--json"
    )
    assert found.rows() == [
        {"instrument": "DummyCam", "id": 3, "full_name": "D03", "purpose": "guider"}
    ]


def test_console_script_exit_statuses(tmp_path: Path, script_env: dict[str, str]) -> None:
    calls: list[list[object]] = [
        ["query-collections", "nowhere"],
        ["query-collections", "nowhere", "--debug"],
        ["collection-chain", "nowhere", "chain", "--mode", "append"],
    ]
    procs = [start_script(args, script_env, tmp_path) for args in calls]  # run side by side
    missing, debug, usage = (finish_script(p, args) for p, args in zip(procs, calls, strict=True))
    message = missing.error()  # exit 1, one line, no traceback
    assert message.startswith(f"{(tmp_path / 'nowhere').resolve()} is not an obsbus repository")
    assert missing.out == ""

    assert debug.code == 1, debug.describe()
    assert debug.err.startswith("Traceback (most recent call last):")
    assert debug.err.splitlines()[-1] == ERROR_PREFIX + message

    assert usage.code == 2, usage.describe()
    assert usage.err.startswith("usage: obsbus collection-chain")
    assert "invalid choice: 'append'" in usage.err
