"""While a registry service serves a repository, the command line writes through it.

Curated calibrations, dataset types, file ingests, certifications and chains become registry
commands (change sets) on the real broker; the registry service applies them, refusals come
back as one line, and a fresh registry replayed from the command topic is identical.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.bus.topics import REGISTRY_EVENTS
from services.butler import Butler, FileToIngest
from services.clients.writes import BusWrites
from services.core.errors import NoAnswerError
from services.core.runfiles import service_pid
from services.core.timespan import Timespan
from services.instruments.simcam import SimCam
from services.registry.datasets import DatasetType
from services.registry.dump import canonical_dump
from tests.conftest import REPO_ROOT
from tests.support.services import Services, kafka_bootstrap

pytestmark = pytest.mark.timeout(600)


def obsbus(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli.main", *args]
    return subprocess.run(
        argv, env=services.env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def ok(services: Services, *args: str) -> str:
    result = obsbus(services, *args)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}\n{services.logs()}"
    return result.stdout


def defects_run(repo: Path, when: str) -> str:
    with Butler.open(repo) as butler:
        match = butler.find(
            "defects", {"instrument": "SimCam", "detector": 94}, ["SimCam/calib"], Timespan.at(when)
        )
        return match.ref.run


def test_cli_writes_go_through_the_registry_service(tmp_path: Path) -> None:
    kafka_bootstrap()
    repo = tmp_path / "repo"
    with Butler.create(repo) as butler:
        SimCam.register(butler.registry)
    (tmp_path / "landing").mkdir()
    services = Services(repo, tmp_path / "landing", tmp_path)
    try:
        services.start("registry")
        deadline = time.monotonic() + 60
        while service_pid(repo, "registry") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service_pid(repo, "registry") is not None, services.logs()

        ok(services, "write-curated-calibrations", str(repo), "SimCam", "--label", "v1")
        again = obsbus(services, "write-curated-calibrations", str(repo), "SimCam", "--label", "v1")
        assert again.returncode == 1 and "label already used" in again.stderr
        ok(services, "write-curated-calibrations", str(repo), "SimCam", "--label", "v2")
        assert defects_run(repo, "2024-06-01").startswith("SimCam/calib/v2/curated/")

        ok(services, "register-dataset-type", str(repo), "bias", "Image", "instrument",
           "detector", "--is-calibration")  # fmt: skip
        table = str(REPO_ROOT / "examples" / "biases.csv")
        ok(services, "ingest-files", str(repo), "bias", "SimCam/calib/masters", table,
           "--data-id", "instrument=SimCam")  # fmt: skip
        ok(services, "certify-calibrations", str(repo), "SimCam/calib/masters",
           "SimCam/calib/2024", "bias", "--begin-date", "2024-11-01")  # fmt: skip
        ok(services, "collection-chain", str(repo), "SimCam/calib", "SimCam/calib/2024",
           "--mode", "prepend")  # fmt: skip
        # Refused by the registry service: its reason comes back as the command's one line.
        refused = obsbus(services, "certify-calibrations", str(repo), "SimCam/calib/masters",
                         "SimCam/calib/masters", "bias")  # fmt: skip
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1] == (
            "obsbus: error: collection 'SimCam/calib/masters' already exists as RUN, not "
            "CALIBRATION"
        ), refused.stderr

        # Commands that can only write directly are refused while the service owns the registry.
        direct = obsbus(services, "ingest-raws", str(repo), str(tmp_path / "landing"))
        assert direct.returncode == 1
        assert "is its only writer" in direct.stderr and "landing folder" in direct.stderr

        events = services.messages(REGISTRY_EVENTS.name, 7)  # partitions: in no set order
        assert sorted(e["kind"] for e in events) == ["changes-applied"] * 6 + [
            "command-rejected"
        ], events
        (rejected,) = [e for e in events if e["kind"] == "command-rejected"]
        assert rejected["reason"] == "collection_exists"
        with Butler.open(repo) as butler:
            kinds = {c.name: c.type.value for c in butler.registry.query_collections()}
            assert kinds["SimCam/calib/v1"] == kinds["SimCam/calib/v2"] == "CALIBRATION"
            curated = [n for n in kinds if "/curated/" in n and n.count("/") == 4]
            assert len(curated) == 2 and all(kinds[n] == "CHAINED" for n in curated)
            assert butler.registry.get_chain("SimCam/calib")[:2] == [
                "SimCam/calib/2024",
                "SimCam/calib/v2",
            ]
            live = canonical_dump(butler.registry, history=True)
    finally:
        services.stop()

    # Everything written is on the command topic: a replay rebuilds the same registry.
    fresh = tmp_path / "fresh"
    with Butler.create(fresh) as butler:
        SimCam.register(butler.registry)
    services.replay(fresh)
    with Butler.open(fresh) as butler:
        assert canonical_dump(butler.registry, history=True) == live


def test_an_unanswered_write_keeps_its_files(tmp_path: Path) -> None:
    """Sent, but no registry service answers in time: the command may still be applied
    later, so the files it points at must stay (a refusal, in contrast, removes them)."""
    kafka_bootstrap()
    repo = tmp_path / "repo"
    with Butler.create(repo) as butler:
        SimCam.register(butler.registry)
        butler.register_dataset_type(DatasetType("bias", ("instrument", "detector"), "Image", True))
    services = Services(repo, tmp_path, tmp_path)  # topics of a fresh namespace, no service
    try:
        # Opened as the command line opens it while a registry service serves the repository.
        with Butler.open(repo, writes=lambda _: BusWrites("pytest", timeout_s=3)) as butler:
            ref = butler.registry.make_ref("bias", {"instrument": "SimCam", "detector": 94}, "r")
            source = REPO_ROOT / "examples" / "bias-R22_S11.fits"
            env = {"OBSBUS_KAFKA_BOOTSTRAP": services.env["OBSBUS_KAFKA_BOOTSTRAP"]}
            env["OBSBUS_KAFKA_NAMESPACE"] = services.env["OBSBUS_KAFKA_NAMESPACE"]
            with pytest.MonkeyPatch.context() as patch:
                for name, value in env.items():
                    patch.setenv(name, value)
                with pytest.raises(NoAnswerError, match="may still be carried out"):
                    butler.ingest([FileToIngest(source, ref)])
            kept = [p for p in butler.datastore.root.rglob("*.fits")]
            assert len(kept) == 1 and kept[0].read_bytes() == source.read_bytes()
            # The command is on the topic: a registry service started now applies it.
        services.start("registry")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with Butler.open(repo) as butler:
                known = {c.name for c in butler.registry.query_collections()}
                if "r" in known and butler.registry.query_datasets("bias", ["r"]):
                    assert butler.datastore.local_path(butler.stored_file(ref)) == kept[0]
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"the sent command was never applied\n{services.logs()}")
    finally:
        services.stop()
