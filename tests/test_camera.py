"""The versioned camera and its ``camera.detector`` component.

Repository tests run on SQLite and PostgreSQL; the CLI tests run the real ``obsbus`` script;
the blessing test runs the registry and calibration services over the real broker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.butler import Butler
from services.calib.curated import write_curated_calibrations
from services.calib.curated_tree import default_source, read_tree
from services.core.errors import (
    CameraDetectorNotFoundError,
    ComponentParameterError,
    DatasetNotFoundError,
    FormatterError,
    InputError,
)
from services.core.timespan import Timespan
from services.datastore.camera import Camera, CameraYamlFormatter
from services.instruments.simcam import SimCam
from services.instruments.simcam.instrument import DETECTORS
from services.registry.datasets import DatasetType
from tests.conftest import REPO_ROOT
from tests.support.cli import db_args, run_script
from tests.support.services import Services, kafka_bootstrap
from tests.test_readme import console_block, run

SHIPPED = default_source(SimCam)
CAMERA_DIR = Path("SimCam/camera")
SIMCAM = {"instrument": "SimCam"}


@pytest.fixture
def simcam(empty_butler: Butler) -> Butler:
    SimCam.register(empty_butler.registry)
    write_curated_calibrations(empty_butler, SimCam, "v1")
    return empty_butler


def detector_at(butler: Butler, detector: int | str, when: str) -> dict[str, Any]:
    _, found = butler.find_and_get(
        "camera.detector", {**SIMCAM, "detector": detector}, ["SimCam/calib"], Timespan.at(when)
    )
    assert isinstance(found, dict)
    return found


def gain(detector: dict[str, Any], amplifier: str) -> float:
    return float(next(a["gain"] for a in detector["amplifiers"] if a["name"] == amplifier))


def swapped_tree(tmp_path: Path, start: str, detector: int, serial: str) -> Path:
    """The shipped tree plus a camera version from ``start`` with a new device in a slot."""
    source = tmp_path / "tree"
    shutil.copytree(SHIPPED, source)
    latest = sorted((source / CAMERA_DIR).iterdir())[-1]
    content = yaml.safe_load(latest.read_text())
    content["detectors"][detector]["serial"] = serial
    content["change"] = f"detector {detector} swapped"
    (source / CAMERA_DIR / f"{start}.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return source


# --- the camera model ---------------------------------------------------------------------------


def test_shipped_cameras_describe_every_detector_of_the_instrument() -> None:
    for path in sorted((SHIPPED / CAMERA_DIR).iterdir()):
        camera = Camera.model_validate(yaml.safe_load(path.read_text()))
        assert [(d.id, d.name, d.serial) for d in camera.detectors] == [
            (d.id, d.full_name, d.serial) for d in DETECTORS
        ]
        assert camera.detector("R22_S11") == camera.detector(94) == camera.detector("94")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["detectors"][1].update(id=0), "detector ids must be unique"),
        (lambda c: c["detectors"][3]["amplifiers"][0].update(gain=-1), "gain"),
        (lambda c: c["detectors"][2].pop("serial"), "serial"),
        (lambda c: c.pop("detectors"), "detectors"),
    ],
    ids=["repeated-id", "negative-gain", "no-serial", "no-detectors"],
)
def test_a_bad_camera_file_is_refused_in_one_line(
    tmp_path: Path, change: Any, expected: str
) -> None:
    source = tmp_path / "tree"
    shutil.copytree(SHIPPED, source)
    path = source / CAMERA_DIR / "2024-06-01T00:00:00.yaml"
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError) as err:
        read_tree(SimCam, source)
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_formatter_parameters_are_checked(tmp_path: Path) -> None:
    path = SHIPPED / CAMERA_DIR / "2024-01-01T00:00:00.yaml"
    formatter = CameraYamlFormatter(None, {"detector": 95})
    formatter.check_parameters("detector")
    assert formatter.read(path, "detector")["name"] == "R22_S12"
    with pytest.raises(ComponentParameterError, match="needs detector"):
        CameraYamlFormatter().check_parameters("detector")
    with pytest.raises(FormatterError, match="takes no parameter"):
        formatter.check_parameters(None)
    with pytest.raises(CameraDetectorNotFoundError, match="no detector 'R99_S99'"):
        CameraYamlFormatter(None, {"detector": "R99_S99"}).read(path, "detector")
    with pytest.raises(FormatterError, match="not a camera description"):
        CameraYamlFormatter().write({"name": "X", "detectors": []}, tmp_path / "bad.yaml")


# --- the repository -----------------------------------------------------------------------------


def test_detector_component_either_side_of_the_gain_change(simcam: Butler) -> None:
    before = detector_at(simcam, 94, "2024-05-31T23:59:59.999")
    after = detector_at(simcam, 94, "2024-06-01T00:00:00")
    assert (gain(before, "C01"), gain(after, "C01")) == (1.55, 1.62)
    assert {k: v for k, v in before.items() if k != "amplifiers"} == {
        k: v for k, v in after.items() if k != "amplifiers"
    }
    twelve = detector_at(simcam, 12, "2024-03-01")
    assert (twelve["id"], twelve["name"], twelve["serial"]) == (12, "R02_S10", DETECTORS[12].serial)
    assert set(twelve) == {"id", "name", "serial", "purpose", "geometry", "amplifiers"}
    assert {"gain", "read_noise"} <= set(twelve["amplifiers"][0])
    # By name too, and the other detectors did not change on 2024-06-01.
    assert detector_at(simcam, "R02_S10", "2024-07-01") == twelve
    # Before the first version there is no camera at all.
    with pytest.raises(DatasetNotFoundError, match="no camera"):
        detector_at(simcam, 12, "2023-12-31")


def test_library_get_with_parameters(simcam: Butler) -> None:
    match = simcam.find("camera", SIMCAM, ["SimCam/calib"], Timespan.at("2024-03-01"))
    whole = simcam.get(match.ref)
    assert len(whole["detectors"]) == len(DETECTORS) and whole["calibration_type"] == "camera"
    part = simcam.get(match.ref, "detector", parameters={"detector": 189})
    assert (part["name"], part["purpose"]) == ("R00_SG0", "guider")
    assert simcam.component_parameters(match.ref, "detector") == {"detector"}
    with pytest.raises(CameraDetectorNotFoundError):
        simcam.get(match.ref, "detector", parameters={"detector": 205})
    with pytest.raises(ComponentParameterError):
        simcam.get(match.ref, "detector")


def test_readme_python_snippet_runs(simcam: Butler) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## The versioned camera and calibration lookups\n", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"butler": simcam, "Timespan": Timespan}
    exec(snippet, namespace)  # the README's own example, run as written
    assert namespace["detector"]["name"] == "R22_S11"
    assert namespace["amp"]["gain"] == gain(namespace["detector"], "C01")


def test_a_detector_swap_is_a_new_camera_version(simcam: Butler, tmp_path: Path) -> None:
    source = swapped_tree(tmp_path, "2024-09-01T00:00:00", 12, "ITL-3800C-999")
    write_curated_calibrations(simcam, SimCam, "v2", source)
    old = detector_at(simcam, 12, "2024-08-31T23:59:59.999")
    new = detector_at(simcam, 12, "2024-09-01T00:00:00")
    assert (old["serial"], new["serial"]) == (DETECTORS[12].serial, "ITL-3800C-999")
    assert detector_at(simcam, 13, "2024-09-01")["serial"] == DETECTORS[13].serial
    # The gain change of 2024-06-01 is still seen at its own times through the new label.
    assert gain(detector_at(simcam, 94, "2024-05-01"), "C01") == 1.55


def test_an_older_repository_keeps_its_camera_storage_class(empty_butler: Butler) -> None:
    """A repository whose camera type is StructuredDataDict (made before the Camera storage
    class) still takes curated writes: the type is kept, not changed under its datasets."""
    SimCam.register(empty_butler.registry)
    legacy = DatasetType("camera", ("instrument",), "StructuredDataDict", is_calibration=True)
    empty_butler.registry.register_dataset_type(legacy)
    write_curated_calibrations(empty_butler, SimCam, "v1")
    assert empty_butler.registry.get_dataset_type("camera") == legacy
    match, whole = empty_butler.find_and_get(
        "camera", SIMCAM, ["SimCam/calib"], Timespan.at("2024-03-01")
    )
    assert len(whole["detectors"]) == len(DETECTORS)
    with pytest.raises(FormatterError, match="no component 'detector'"):
        empty_butler.get(match.ref, "detector", parameters={"detector": 12})


# --- the command --------------------------------------------------------------------------------


def test_cli_get_camera_detector(
    tmp_path: Path, cli_env: dict[str, str], db_settings: dict[str, str | None]
) -> None:
    def obsbus(*args: object) -> Any:
        return run_script(args, cli_env, tmp_path)

    repo = tmp_path / "repo"
    for step in (
        ["create", repo, *db_args(db_settings)],
        ["register-instrument", repo, "SimCam"],
        ["write-curated-calibrations", repo, "SimCam", "--label", "v1"],
    ):
        result = obsbus(*step)
        assert result.code == 0, result.describe()
    lookup = ["get", repo, "camera.detector", "--collections", "SimCam/calib"]
    result = obsbus(
        *lookup, "--data-id", "instrument=SimCam", "detector=12", "--time", "2024-03-01"
    )
    assert result.code == 0, result.describe()
    shown = yaml.safe_load(result.out)
    assert (shown["id"], shown["name"], shown["serial"]) == (12, "R02_S10", DETECTORS[12].serial)
    for when, expected in (("2024-05-31T23:59:59", 1.55), ("2024-06-01T00:00:00", 1.62)):
        result = obsbus(
            *lookup, "--data-id", "instrument=SimCam", "detector=94", "--time", when, "--json"
        )
        assert gain(result.json(), "C01") == expected, result.describe()
    wrong = obsbus(
        *lookup, "--data-id", "instrument=SimCam", "detector=999", "--time", "2024-03-01"
    )
    assert "has no detector 999" in wrong.error()
    missing = obsbus(*lookup, "--data-id", "instrument=SimCam", "--time", "2024-03-01")
    assert "needs detector" in missing.error()


# --- blessing a new camera over the bus ---------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_new_camera_version_blessed_over_the_bus(tmp_path: Path) -> None:
    kafka_bootstrap()
    repo, landing = tmp_path / "repo", tmp_path / "landing"
    landing.mkdir()
    with Butler.create(repo) as butler:
        SimCam.register(butler.registry)
        write_curated_calibrations(butler, SimCam, "v1")
    source = swapped_tree(tmp_path, "2024-10-01T00:00:00", 94, "E2V-CCD250-001")
    table = tmp_path / "camera.csv"
    table.write_text(f"file\n{source / CAMERA_DIR / '2024-10-01T00:00:00.yaml'}\n")
    services = Services(repo, landing, tmp_path)
    try:
        services.start("registry", "calib")

        def obsbus(*args: object) -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "services.cli.main", *(str(a) for a in args)]
            done = subprocess.run(argv, env=services.env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr + services.logs()
            return done

        obsbus("ingest-files", repo, "camera", "SimCam/camera/swap", table, "--data-id",
               "instrument=SimCam")  # fmt: skip
        blessed = obsbus(
            "bless", repo, "--collection", "SimCam/calib/swap", "--dataset-type", "camera",
            "--run", "SimCam/camera/swap", "--begin-date", "2024-10-01", "--timeout", "120",
        )  # fmt: skip
        assert "blessed into SimCam/calib/swap" in blessed.stdout
        obsbus("collection-chain", repo, "SimCam/calib", "SimCam/calib/swap", "--mode", "prepend")
    finally:
        services.stop()
    with Butler.open(repo) as butler:
        before = detector_at(butler, 94, "2024-09-30T23:59:59.999")
        after = detector_at(butler, 94, "2024-10-01T00:00:00")
        assert (before["serial"], after["serial"]) == ("E2V-CCD250-918", "E2V-CCD250-001")
        assert gain(before, "C01") == gain(after, "C01") == 1.62
        assert gain(detector_at(butler, 94, "2024-05-01"), "C01") == 1.55


# --- the README section -------------------------------------------------------------------------


def test_readme_section_runs(tmp_path: Path, cli_env: dict[str, str]) -> None:
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    outputs = []
    for command in console_block("The versioned camera and calibration lookups"):
        result = run(command, tmp_path, cli_env)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    twelve = yaml.safe_load(outputs[3])
    assert (twelve["id"], twelve["serial"]) == (12, DETECTORS[12].serial)
    assert gain(json.loads(outputs[4]), "C01") == 1.62
    assert "transmission_filter" in outputs[7] and "camera" in outputs[7]
    pairs = json.loads(outputs[8])
    assert {r["dataset_type"] for r in pairs} >= {"camera", "defects", "transmission_filter"}
