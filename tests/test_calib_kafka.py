"""Blessing suites over the real Kafka broker: `obsbus serve registry|calib` processes, the
`obsbus bless-suite` command and the library call, each test in its own topic namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.bus.topics import CALIB_OUTCOMES
from services.butler import Butler
from services.calib.suite import Suite
from services.clients.blessing import bless_suite
from services.core.errors import BlessingRejectedError
from services.ingest.headers import configure_offline_translation
from services.ingest.raws import RawIngester, find_raw_files
from services.instruments import load_instrument
from services.instruments.simcam import write_exposure
from services.registry.datasets import DatasetType
from services.registry.dump import canonical_dump
from tests.conftest import REPO_ROOT
from tests.support.services import Services, kafka_bootstrap
from tests.test_readme import console_block, kafka_env, run

pytestmark = pytest.mark.timeout(600)

TARGET = "SimCam/calib/2024"
T = "2024-11-25T00:00:00"  # the old flat ends here, the new one starts
RUNS = {"bias": "SimCam/calib/bias", "dark": "SimCam/calib/dark", "flat": "SimCam/calib/flat"}
NEW_FLATS = "SimCam/calib/flat-new"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Registry and calib services over a repository with two exposures and calibrations."""
    kafka_bootstrap()
    repo = tmp_path / "repo"
    with Butler.create(repo) as butler:
        load_instrument("SimCam").register(butler.registry)
        for name in RUNS:
            butler.registry.register_dataset_type(
                DatasetType(name, ("instrument", "detector"), "Json", True)
            )
        for det in (0, 1):
            data_id = {"instrument": "SimCam", "detector": det}
            for name, run in RUNS.items():
                butler.put({"kind": name}, name, data_id, run)
            butler.put({"kind": "flat", "new": True}, "flat", data_id, NEW_FLATS)
        raws = tmp_path / "raws"
        write_exposure(raws, 1, "2024-11-20T01:00:00", detectors=[0, 1])
        write_exposure(raws, 2, "2024-11-28T01:00:00", detectors=[0, 1])
        configure_offline_translation()
        outcomes = list(RawIngester(butler).ingest(find_raw_files([raws])))
        assert [o.status for o in outcomes] == ["ingested"] * 4
    (tmp_path / "landing").mkdir()
    running = Services(repo, tmp_path / "landing", tmp_path)
    running.start("registry", "calib")
    yield running
    running.stop()


def exposures(repo: Path) -> list[int]:
    with Butler.open(repo) as butler:
        return sorted(r["id"] for r in butler.registry.query_dimension_records("exposure"))


def run_for_exposure(repo: Path, name: str, exposure: int, det: int) -> str | None:
    """The run of the calibration found for an exposure (by its timespan) in the target."""
    with Butler.open(repo) as butler:
        registry = butler.registry
        ((_, timespan),) = registry.with_exposures(
            [{"instrument": "SimCam", "exposure": exposure, "detector": det}]
        )
        match = registry.find_calibration(
            name, {"instrument": "SimCam", "detector": det}, [TARGET], timespan
        )
        return None if match is None else match.ref.run


def obsbus(services: Services, *args: object) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli.main", *(str(a) for a in args)]
    return subprocess.run(argv, env=services.env, capture_output=True, text=True, timeout=300)


def suite_file(path: Path, calibrations: list[Any], adjustments: Any = ()) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "collection": TARGET,
                "reason": "pytest",
                "calibrations": calibrations,
                "adjustments": list(adjustments),
            }
        )
    )
    return path


def item(name: str, run: str | None = None, begin: str = "2024-11-01T00:00:00") -> Any:
    return {"dataset_type": name, "run": run or RUNS[name], "begin": begin}


def end_flat(det: int) -> dict[str, Any]:
    return {
        "dataset_type": "flat",
        "data_id": {"instrument": "SimCam", "detector": det},
        "action": "end",
        "end": T,
    }


def test_suites_over_the_broker(services: Services, tmp_path: Path) -> None:
    early, late = exposures(services.repo)
    # 1. bias + dark + flat in one request, from the command line.
    first = suite_file(tmp_path / "first.yaml", [item("bias"), item("dark"), item("flat")])
    result = obsbus(services, "bless-suite", services.repo, first, "--timeout", "120", "--json")
    assert result.returncode == 0, result.stderr + services.logs()
    outcome = json.loads(result.stdout)
    assert (outcome["status"], outcome["certified"]) == ("blessed", 6)
    for name, expected in RUNS.items():
        for exposure in (early, late):
            assert run_for_exposure(services.repo, name, exposure, 1) == expected

    # 2. "End the old flat at T, the new one starts at T", from Python.
    change = Suite.model_validate(
        yaml.safe_load(
            suite_file(
                tmp_path / "change.yaml",
                [item("flat", NEW_FLATS, begin=T)],
                [end_flat(0), end_flat(1)],
            ).read_text()
        )
    )
    blessed = bless_suite(change, bus=services.bus, timeout_s=120)
    assert (blessed.status, blessed.certified) == ("blessed", 2)
    for det in (0, 1):
        assert run_for_exposure(services.repo, "flat", early, det) == RUNS["flat"]
        assert run_for_exposure(services.repo, "flat", late, det) == NEW_FLATS

    # 3. A conflict anywhere in a suite: nothing applied, the reason in the outcome.
    before = _dump(services.repo)
    clash = suite_file(
        tmp_path / "clash.yaml",
        [item("bias", begin="2025-01-01T00:00:00"), item("dark", begin=T)],
        [  # the bias part is fine: the old biases end where the new range starts
            {
                "dataset_type": "bias",
                "data_id": {"instrument": "SimCam", "detector": det},
                "action": "end",
                "end": "2025-01-01T00:00:00",
            }
            for det in (0, 1)
        ],
    )
    refused = obsbus(services, "bless-suite", services.repo, clash, "--timeout", "120")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("obsbus: error: blessing rejected [validity_overlap]")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _dump(services.repo) == before
    outcomes = services.messages(CALIB_OUTCOMES.name, 3)
    assert [(o["status"], o["reason"]) for o in outcomes] == [
        ("blessed", None),
        ("blessed", None),
        ("rejected", "validity_overlap"),
    ]
    assert "dark" in outcomes[2]["message"] and "bias" not in outcomes[2]["message"]
    with pytest.raises(BlessingRejectedError, match=r"\[validity_overlap\]"):
        overlapping = [item("flat", NEW_FLATS, begin="2024-11-20T00:00:00")]
        bless_suite(
            Suite.model_validate({"collection": TARGET, "calibrations": overlapping}),
            bus=services.bus,
            timeout_s=120,
        )


def _dump(repo: Path) -> Any:
    with Butler.open(repo) as butler:
        return canonical_dump(butler.registry)


def test_one_dataset_blessed_into_two_collections(services: Services) -> None:
    early, late = exposures(services.repo)
    for collection, dates in (
        ("SimCam/calib/A", ["--end-date", T]),
        ("SimCam/calib/B", ["--begin-date", T]),
    ):
        result = obsbus(
            services,
            "bless",
            services.repo,
            "--collection",
            collection,
            "--dataset-type",
            "bias",
            "--run",
            RUNS["bias"],
            *dates,
            "--timeout",
            "120",
        )
        assert result.returncode == 0, result.stderr + services.logs()
        assert f"blessed into {collection}: 2 validity range(s) certified" in result.stdout
    with Butler.open(services.repo) as butler:
        for collection, found_early, found_late in (
            ("SimCam/calib/A", True, False),
            ("SimCam/calib/B", False, True),
        ):
            for exposure, expected in ((early, found_early), (late, found_late)):
                ((_, ts),) = butler.registry.with_exposures(
                    [{"instrument": "SimCam", "exposure": exposure, "detector": 0}]
                )
                match = butler.registry.find_calibration(
                    "bias", {"instrument": "SimCam", "detector": 0}, [collection], ts
                )
                assert (match is not None) == expected, (collection, exposure)


def test_readme_blessing_suites_and_moving_calibrations(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    env = kafka_env(cli_env)
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    found = []
    try:
        for command in console_block("Blessing suites and moving calibrations"):
            result = run(command, tmp_path, env)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if command.startswith("obsbus bless-suite"):
                assert "blessed into SimCam/calib/suite: 3 validity range(s)" in result.stdout
            if command.startswith("obsbus find-calibration"):
                found.append(result.stdout)
    finally:
        run("obsbus down calibs", tmp_path, env)
    # After the suite, detector 94's flat on 2024-12-02 is the December one, valid from
    # 2024-12-01; the other repository has it too, in the run the import made.
    here, elsewhere = found
    assert "SimCam/calib/flats-2024-12" in here and "2024-12-01T00:00:00" in here, here
    assert "SimCam/calib/import/" in elsewhere and "2024-12-01T00:00:00" in elsewhere, elsewhere
