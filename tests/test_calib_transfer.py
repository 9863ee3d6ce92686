"""`obsbus import-calibrations` and `export-calibrations`, on SQLite and PostgreSQL.

Import goes through the blessing-suite checks (calib.suite.check_suite) and is all or nothing;
an export imports into a second repository as the same collection.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from services.butler import Butler
from services.core.timespan import Timespan
from tests.conftest import REPO_ROOT
from tests.support.cli import Cli, db_args

EXAMPLES = REPO_ROOT / "examples"
COLLECTION = "SimCam/calib/external"
FLAT_DIMS = "[instrument, detector, physical_filter]"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def make_repo(cli: Cli, path: Path, settings: dict[str, str | None]) -> Path:
    cli("create", path, *db_args(settings))
    cli("register-instrument", path, "SimCam")
    cli(
        "register-dataset-type", path, "bias", "Image", "instrument", "detector", "--is-calibration"
    )
    return path


@pytest.fixture
def repo(tmp_path: Path, cli: Cli, db_settings: dict[str, str | None]) -> Path:
    return make_repo(cli, tmp_path / "repo", db_settings)


@pytest.fixture
def other_settings(db_settings: dict[str, str | None]) -> Iterator[dict[str, str | None]]:
    """Database settings for a second repository (another PostgreSQL schema)."""
    if db_settings["db"] is None:
        yield db_settings
        return
    namespace = f"{db_settings['db_namespace']}_b"
    yield {"db": db_settings["db"], "db_namespace": namespace}
    engine = sqlalchemy.create_engine(db_settings["db"])
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    engine.dispose()


def write_table(folder: Path, rows: list[str], meta: str = "", header: str = "") -> Path:
    """An ECSV validity table next to copies of the example bias files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("bias-R22_S11.fits", "bias-R22_S12.fits"):
        shutil.copy(EXAMPLES / name, folder / name)
    columns = header or (
        "- {name: dataset_type, datatype: string}\n"
        "# - {name: instrument, datatype: string}\n"
        "# - {name: detector, datatype: int64}\n"
        "# - {name: physical_filter, datatype: string}\n"
        "# - {name: begin, datatype: string}\n"
        "# - {name: end, datatype: string}\n"
        "# - {name: file, datatype: string}\n"
    )
    names = [line.split("name: ")[1].split(",")[0] for line in columns.splitlines()]
    text = (
        "# %ECSV 1.0\n# ---\n# datatype:\n# "
        + columns
        + (f"# meta:\n{meta}" if meta else "")
        + "# schema: astropy-2.0\n"
        + " ".join(names)
        + "\n"
        + "".join(f"{r}\n" for r in rows)
    )
    path = folder / "validity.ecsv"
    path.write_text(text)
    return path


FLAT_META = (
    f"#   collection: {COLLECTION}\n"
    "#   dataset_types:\n"
    f"#     flat: {{storage_class: Image, dimensions: {FLAT_DIMS}}}\n"
)
GOOD_ROWS = [
    'bias SimCam 94 "" 2024-11-01T00:00:00 2024-12-01T00:00:00 bias-R22_S11.fits',
    'bias SimCam 94 "" 2024-12-01T00:00:00 "" bias-R22_S12.fits',
    'bias SimCam 95 "" 2024-11-01T00:00:00 "" bias-R22_S12.fits',
    'flat SimCam 94 r_57 "" "" bias-R22_S11.fits',
]


def contents(repo: Path, collection: str) -> list[tuple[Any, ...]]:
    """What a collection holds, independent of dataset ids: type, data ID, range, checksum."""
    with Butler.open(repo) as butler:
        return sorted(
            (
                ref.dataset_type.name,
                ref.dataset_type.storage_class,
                tuple(ref.data_id.items()),
                str(ts),
                butler.stored_file(ref).checksum,
            )
            for ref, ts in butler.registry.query_calibrations(collection)
        )


def files_under(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*.fits") if p.is_file())


def test_import_then_export_round_trips_to_a_second_repository(
    repo: Path, cli: Cli, tmp_path: Path, other_settings: dict[str, str | None]
) -> None:
    table = write_table(tmp_path / "external", GOOD_ROWS, FLAT_META)
    out = cli("import-calibrations", repo, table, "--run", "SimCam/calib/import/one").out
    assert "imported 4 calibration(s) into SimCam/calib/import/one" in out
    assert f"4 validity range(s) certified in {COLLECTION}" in out
    with Butler.open(repo) as butler:
        found = butler.registry.find_calibration(
            "bias",
            {"instrument": "SimCam", "detector": 94},
            [COLLECTION],
            Timespan.at("2025-01-01"),
        )
        assert found is not None and found.timespan == Timespan.from_times("2024-12-01", None)
        flat = butler.registry.get_dataset_type("flat")
        assert flat.is_calibration and "physical_filter" in flat.dimensions
    exported = cli("export-calibrations", repo, COLLECTION, tmp_path / "export").out
    assert "exported 4 validity range(s), 4 file(s)" in exported
    second = make_repo(cli, tmp_path / "second", other_settings)
    cli("import-calibrations", second, tmp_path / "export" / "calibrations.ecsv")
    assert contents(second, COLLECTION) == contents(repo, COLLECTION)
    assert len(contents(repo, COLLECTION)) == 4
    with Butler.open(second) as butler:
        runs = sorted(c.name for c in butler.registry.query_collections() if "/import/" in c.name)
        # The second bias of detector 94 (another file) goes into a run of its own.
        assert runs[0].startswith("SimCam/calib/import/20") and runs[1:] == [f"{runs[0]}/2"]
    # Importing the same export again overlaps what is there: refused, nothing written.
    before = files_under(second)
    exported_table = tmp_path / "export" / "calibrations.ecsv"
    message = cli.fails("import-calibrations", second, exported_table, "--run", "again")
    assert message.startswith(f"cannot certify bias, flat into {COLLECTION}: overlaps"), message
    assert files_under(second) == before


def test_export_to_an_ecsv_path(repo: Path, cli: Cli, tmp_path: Path) -> None:
    cli("import-calibrations", repo, write_table(tmp_path / "ext", GOOD_ROWS, FLAT_META))
    target = tmp_path / "out" / "mine.ecsv"
    cli("export-calibrations", repo, COLLECTION, target)
    assert target.is_file() and len(list((tmp_path / "out").rglob("*.fits"))) == 4
    assert "already exists" in cli.fails("export-calibrations", repo, COLLECTION, target)


@pytest.mark.parametrize(
    ("rows", "meta", "problem"),
    [
        (  # two rows for one data ID with overlapping ranges
            [
                'bias SimCam 94 "" 2024-11-01T00:00:00 "" bias-R22_S11.fits',
                'bias SimCam 94 "" 2024-12-01T00:00:00 "" bias-R22_S12.fits',
            ],
            FLAT_META,
            "item 2 of the suite",
        ),
        (  # a detector SimCam does not have
            ['bias SimCam 999 "" "" "" bias-R22_S11.fits'],
            FLAT_META,
            "detector=999",
        ),
        (  # a dataset type neither registered nor declared
            ['dark SimCam 94 "" "" "" bias-R22_S11.fits'],
            FLAT_META,
            "dataset type 'dark' is not registered",
        ),
        (  # a missing file, after a good row: the good row's file must go too
            ['bias SimCam 95 "" "" "" bias-R22_S12.fits', 'bias SimCam 94 "" "" "" gone.fits'],
            FLAT_META,
            "gone.fits",
        ),
        (  # a bad time
            ['bias SimCam 94 "" yesterday "" bias-R22_S11.fits'],
            FLAT_META,
            "row 1: cannot read 'yesterday' as a time",
        ),
        (  # no collection given anywhere
            ['bias SimCam 94 "" "" "" bias-R22_S11.fits'],
            "",
            "give --collection",
        ),
    ],
)
def test_a_bad_table_is_one_line_and_writes_nothing(
    repo: Path, cli: Cli, tmp_path: Path, rows: list[str], meta: str, problem: str
) -> None:
    table = write_table(tmp_path / "external", rows, meta)
    with Butler.open(repo) as butler:
        before = sorted(c.name for c in butler.registry.query_collections())
    message = cli.fails("import-calibrations", repo, table)
    assert problem in message, message
    with Butler.open(repo) as butler:
        assert sorted(c.name for c in butler.registry.query_collections()) == before
    assert files_under(repo) == []


def test_a_table_without_its_columns_is_refused(repo: Path, cli: Cli, tmp_path: Path) -> None:
    header = "- {name: dataset_type, datatype: string}\n# - {name: detector, datatype: int64}\n"
    table = write_table(tmp_path / "external", ["bias 94"], FLAT_META, header)
    message = cli.fails("import-calibrations", repo, table)
    assert (
        message == f"{table}: missing column(s) begin, end, file (columns: dataset_type, detector)"
    )


def test_import_blesses_into_a_collection_that_already_holds_calibrations(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    early = ['bias SimCam 94 "" 2024-01-01T00:00:00 2024-06-01T00:00:00 bias-R22_S11.fits']
    late = ['bias SimCam 94 "" 2024-06-01T00:00:00 "" bias-R22_S12.fits']
    cli("import-calibrations", repo, write_table(tmp_path / "a", early, FLAT_META), "--run", "r/a")
    cli("import-calibrations", repo, write_table(tmp_path / "b", late, FLAT_META), "--run", "r/b")
    ranges = [c[3] for c in contents(repo, COLLECTION)]
    assert sorted(ranges) == [
        "[2024-01-01T00:00:00, 2024-06-01T00:00:00)",
        "[2024-06-01T00:00:00, +inf)",
    ]
    message = cli.fails(
        "import-calibrations", repo, write_table(tmp_path / "c", late, FLAT_META), "--run", "r/b"
    )
    assert "run 'r/b' already exists" in message
