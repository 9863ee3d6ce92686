"""A night of chaos: SimCam exposures land while services and the broker are killed -9 at random.

    .venv/bin/python bench/chaos.py [--exposures 6] [--detectors 40] [--kills 6] [--seed N]

Runs on a private broker (deploy/kafka.sh in a temporary folder, on free ports) under
`obsbus up`'s supervisor, with a SQLite repository. While the exposures land, a random victim
(watcher, ingest, registry, calib or the broker) is killed -9 at random moments; the
supervisor must bring each back. Then it checks what a summit operator needs to be true:
every file has an outcome, one raw per file, the registry identical to an in-process
`ingest-raws` of the same files, and a replay of the command topic identical to the live
registry. Prints what was killed and what was found; exits 1 if anything is wrong. Bounded
in time (--timeout for the outcomes). A short run is part of the tests (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from services.bus.topics import INGEST_OUTCOMES  # noqa: E402
from tests.support.services import (  # noqa: E402
    Supervised,
    free_port_pair,
    land_exposure,
    new_repo,
    night_findings,
)

KAFKA_SH = PROJECT_ROOT / "deploy" / "kafka.sh"
VICTIMS = ("watcher", "ingest", "registry", "calib", "broker")


def kafka(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KAFKA_SH), action], env=env, capture_output=True, text=True, timeout=300
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exposures", type=int, default=6)
    parser.add_argument("--detectors", type=int, default=40, help="files per exposure")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between exposures")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for outcomes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    # kafka-python reports every refused connection of an outage; the services say it once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="obsbus-chaos-"))
    env = {**os.environ, "OBSBUS_KAFKA_DIR": str(tmp / "kafka")}
    env["OBSBUS_KAFKA_PORT"] = str(free_port_pair())
    env.pop("OBSBUS_KAFKA_BOOTSTRAP", None)
    print(
        f"chaos: seed {args.seed}, {args.exposures} exposures of {args.detectors} files, "
        f"{args.kills} kills; in {tmp}",
        flush=True,
    )
    started = kafka(env, "start")
    if started.returncode != 0:
        print(f"chaos: the broker did not start: {started.stderr.strip()[-300:]}")
        return 1
    landing = tmp / "landing"
    landing.mkdir()
    night = Supervised(
        new_repo(tmp / "repo"), landing, tmp, bootstrap=kafka(env, "bootstrap").stdout.strip()
    )
    night.env.update(env)
    killed: list[str] = []
    try:
        night.up(
            OBSBUS_KAFKA_BOOTSTRAP=None,  # the local broker, looked after by the supervisor
            OBSBUS_RESTART_BACKOFF_S="0.5",
            OBSBUS_RESTART_BROKER_CHECK_S="1",
            OBSBUS_KAFKA_DELIVERY_TIMEOUT_S="10",
        )
        clock = time.monotonic()
        files: list[Path] = []

        def land() -> None:
            for seq in range(1, args.exposures + 1):
                files.extend(land_exposure(landing, seq, args.detectors))
                time.sleep(args.interval)

        lander = threading.Thread(target=land)
        lander.start()
        span = args.exposures * args.interval
        for _ in range(args.kills):
            time.sleep(rng.uniform(0.2, 2 * span / max(1, args.kills)))
            victim = rng.choice(VICTIMS)
            pid = _victim_pid(night, env, victim)
            if pid is None:
                print(
                    f"  t={time.monotonic() - clock:5.1f} s  {victim} is not running (being "
                    "restarted): spared",
                    flush=True,
                )
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(victim)
            print(
                f"  t={time.monotonic() - clock:5.1f} s  killed -9 {victim} (pid {pid})", flush=True
            )
        lander.join()
        return _report(night, files, tmp, killed, args.timeout)
    finally:
        night.stop()
        kafka(env, "stop")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _victim_pid(night: Supervised, env: dict[str, str], victim: str) -> int | None:
    if victim == "broker":
        # Not while the supervisor restarts it: that kill would count as the same outage.
        if night.state()["broker"]["state"] != "running" or kafka(env, "status").returncode:
            return None
        return int((Path(env["OBSBUS_KAFKA_DIR"]) / "kafka.pid").read_text())
    service = night.state()["services"][victim]
    return int(service["pid"]) if service["state"] == "running" else None


def _report(
    night: Supervised, files: list[Path], tmp: Path, killed: list[str], timeout_s: float
) -> int:
    wanted = {str(f) for f in files}
    outcomes = night.messages(
        INGEST_OUTCOMES.name, lambda out: {o["file"] for o in out} >= wanted, timeout_s
    )
    findings = []
    missing = wanted - {o["file"] for o in outcomes}
    if missing:
        findings.append(
            f"{len(missing)} of {len(wanted)} files have no outcome after {timeout_s:.0f} s"
        )
    failed = [o for o in outcomes if o["status"] == "failed"]
    if failed:
        findings.append(
            f"{len(failed)} failed outcomes, e.g. {failed[0]['reason']}: {failed[0]['message']}"
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
        s["state"] != "running" for s in night.state()["services"].values()
    ):
        time.sleep(0.5)
    state = night.state()
    for name, s in state["services"].items():
        if s["state"] != "running":
            findings.append(f"{name} is {s['state']}: {s['reason'] or s['last_exit']}")
        elif s["restarts"] != killed.count(name):
            findings.append(f"{name} restarted {s['restarts']} times, killed {killed.count(name)}")
    if state["broker"]["restarts"] != killed.count("broker"):
        findings.append(
            f"broker restarted {state['broker']['restarts']} times, killed {killed.count('broker')}"
        )
    if not missing:
        findings += night_findings(night, files, tmp)
    repeats = len(outcomes) - len({o["file"] for o in outcomes})
    print(
        f"chaos: {len(killed)} kills ({', '.join(killed) or 'none'}); {len(files)} files, "
        f"{len(outcomes)} outcomes ({repeats} repeats, recognisable by arrival_id)"
    )
    for finding in findings:
        print(f"  FOUND: {finding}")
    if not findings:
        print(
            "chaos: every file registered exactly once; registry = in-process ingest-raws; "
            "replay = live"
        )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
