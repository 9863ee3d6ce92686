"""Commands that run and watch the services: serve, up, down, status, events, bless."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .. import messages
from ..bus.config import KafkaSettings
from ..bus.outage import Outage
from ..bus.topics import ALL_TOPICS, topic
from ..bus.transport import KafkaBus
from ..core import runfiles
from ..core.dimensions import parse_data_id_args
from ..core.errors import BusError, ConfigError, OutageError
from ..core.timespan import Timespan, ns_to_iso
from ..web.config import DashboardSettings
from . import supervisor
from . import up as up_mod

Sub = Any
SERVICES = ("watcher", "ingest", "registry", "calib", "dashboard")


def add_commands(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run one service in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("repo", type=Path)
    p.add_argument(
        "--watch", type=Path, nargs="+", default=[], metavar="DIR", help="landing folders (watcher)"
    )
    p.add_argument(
        "--watch-mode",
        default="auto",
        choices=["auto", "inotify", "scan"],
        help="how the watcher learns of files: inotify events, or scan (re-read the folders; "
        "for shared filesystems written by other hosts). auto: inotify unless unavailable or "
        "a folder is on NFS/GPFS/... (watcher)",
    )
    # No "move": a redelivered arrival must still find its file in the landing folder.
    p.add_argument(
        "--transfer",
        default="copy",
        choices=["copy", "hardlink", "symlink", "direct"],
        help="datastore transfer mode (ingest)",
    )
    p.add_argument("--host", help="address the dashboard listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="the dashboard's port (default 8642; 0: any free)")
    p.add_argument("--hours", type=float, help="the window the dashboard shows (default 12)")
    p.add_argument("--name", help="instance name (default: the service name)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "up", parents=[common], help="start the broker (unless configured) and the four services"
    )
    p.add_argument("repo", type=Path)
    p.add_argument("--watch", type=Path, help="landing folder (default: REPO/landing)")
    p.add_argument(
        "--simulate",
        type=int,
        default=0,
        metavar="N",
        help="land a simulated SimCam night of N exposures",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between simulated exposures",
    )
    p.add_argument("--detach", action="store_true", help="start and return (stop: obsbus down)")
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once every landed file has an outcome (with --simulate)",
    )
    p.set_defaults(func=up_mod.cmd_up)

    p = sub.add_parser(
        "supervise",
        parents=[common],
        help="keep a repository's services running (what `up` starts; restarts with backoff)",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("--watch", type=Path, required=True, help="landing folder (watcher)")
    p.add_argument("--services", nargs="+", default=list(up_mod.SERVICE_NAMES))
    p.add_argument("--bootstrap", help="the broker's address (for status)")
    p.add_argument(
        "--local-broker",
        action="store_true",
        help="the services use the local broker (deploy/kafka.sh): restart it if it dies",
    )
    p.add_argument(
        "--broker-started",
        action="store_true",
        help="the local broker was started for these services: stop it at the end",
    )
    p.set_defaults(func=supervisor.cmd_supervise)

    p = sub.add_parser("down", parents=[common], help="stop what `obsbus up --detach` started")
    p.add_argument("repo", type=Path)
    p.set_defaults(func=up_mod.cmd_down)

    p = sub.add_parser("status", parents=[common], help="every service, its pid and its lag")
    p.add_argument("repo", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=up_mod.cmd_status)

    p = sub.add_parser("events", parents=[common], help="print decoded events from topics")
    p.add_argument("repo", type=Path)
    p.add_argument("--topic", action="append", help="topic name (default: every topic)")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many idle seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser(
        "replay",
        parents=[common],
        help="rebuild a registry from the registry-command topic (from offset 0)",
    )
    p.add_argument("repo", type=Path, help="a fresh repository (instruments registered)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "dump", parents=[common], help="canonical JSON dump of a registry (to compare two)"
    )
    p.add_argument("repo", type=Path)
    p.add_argument(
        "--history",
        action="store_true",
        help="also when each change happened (the history `--as-of` lookups see)",
    )
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser(
        "bless",
        parents=[common],
        help="ask the calibration service to certify calibrations, and wait",
    )
    p.add_argument("repo", type=Path)
    p.add_argument("--collection", required=True, help="target CALIBRATION collection")
    p.add_argument("--dataset-type", required=True)
    p.add_argument("--run", required=True, help="RUN holding the calibrations")
    p.add_argument(
        "--data-id",
        nargs="+",
        action="append",
        default=[],
        metavar="K=V",
        help="one data ID (repeat for more; default: every dataset in the run)",
    )
    p.add_argument("--begin-date", help="ISO TAI start of validity (default: unbounded)")
    p.add_argument("--end-date", help="ISO TAI end of validity (default: unbounded)")
    p.add_argument("--reason", default="", help="why (kept with the request)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_bless)


def kafka_bus(client_id: str) -> KafkaBus:
    return KafkaSettings().bus(client_id)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..core.logging import configure_logging

    configure_logging(json=True)
    name = args.name or args.service
    run_dir = runfiles.run_dir(args.repo)
    stop = threading.Event()
    if args.service == "registry":
        # The only writer: the one whose command topic a replay rebuilds the registry from,
        # and the one the CLI's writes are sent to while it runs.
        running = runfiles.service_pid(args.repo, "registry")
        if running is not None and running != os.getpid():
            raise ConfigError(
                f"a registry service already serves {args.repo} (pid {running}); it must be "
                "the registry's only writer: stop it first (`obsbus down REPO`, or kill it)"
            )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    (run_dir / f"{name}.pid").write_text(str(os.getpid()))
    bus = _connect(name, stop)
    if bus is None:  # stopped while waiting for the broker
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
        return 0
    try:
        runnable = _build(args, name, bus, stop)
        if runnable is not None:
            runnable.run(stop)
    finally:
        bus.close()
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
    return 0


def _build(
    args: argparse.Namespace, name: str, bus: KafkaBus, stop: threading.Event
) -> up_mod.Runnable | None:
    """The service, once its database answers (an outage at start is waited out like one
    later on, not a crash the supervisor would give up on); None if stopped first."""
    outage = Outage(name, what="database", max_backoff_s=5.0)
    while not stop.is_set():
        try:
            runnable = up_mod.service(
                args.service,
                name,
                args.repo,
                bus,
                args.watch,
                args.transfer,
                args.watch_mode,
                _dashboard_settings(args),
            )
        except OutageError as err:
            outage.wait(err, stop)
            continue
        outage.ok()
        return runnable
    return None


def _dashboard_settings(args: argparse.Namespace) -> DashboardSettings:
    flags = {k: getattr(args, k) for k in ("host", "port", "hours")}
    return DashboardSettings(**{k: v for k, v in flags.items() if v is not None})


def _connect(name: str, stop: threading.Event) -> KafkaBus | None:
    """The service's bus once the broker answers (a service started during a broker outage
    waits for it instead of exiting into a restart loop); None if stopped first."""
    outage = Outage(name)
    while not stop.is_set():
        try:
            bus = kafka_bus(f"obsbus-{name}")
        except BusError as err:
            outage.wait(err, stop)
            continue
        outage.ok()
        return bus
    return None


def cmd_events(args: argparse.Namespace) -> int:
    names = args.topic or [t.name for t in ALL_TOPICS]
    for name in names:
        topic(name)  # refuse unknown topics with the list of known ones
    bus = kafka_bus("obsbus-events")
    group = f"obsbus-events-{uuid.uuid4().hex[:8]}"
    consumer = bus.consumer(group, names)
    if not args.from_beginning:
        consumer.poll(1.0, 1)  # join the group, then start from the end
        for tp in consumer.assignment():
            consumer.seek(tp, bus.end_offsets(tp[0]).get(tp[1], 0))
    shown, idle_since = 0, time.monotonic()
    try:
        while args.max is None or shown < args.max:
            batch = consumer.poll(0.5, 500)
            if not batch:
                if args.timeout is not None and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            idle_since = time.monotonic()
            for d in batch:
                message = messages.decode(d.value)
                row = {
                    "topic": d.topic,
                    "partition": d.partition,
                    "offset": d.offset,
                    "key": None if d.key is None else d.key.decode(errors="replace"),
                    "record": message.RECORD,
                    **_printable(message.to_value()),
                }
                print(json.dumps(row, default=str) if args.json else _line(row), flush=True)
                shown += 1
                if args.max is not None and shown >= args.max:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        bus.close()
    return 0


def _printable(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in value.items():
        out[k] = v.hex() if isinstance(v, bytes) else v
        if k.endswith("_ns") and isinstance(v, int):
            out[k.removesuffix("_ns")] = ns_to_iso(v)
            del out[k]
    return out


def _line(row: dict[str, Any]) -> str:
    head = f"{row.pop('topic')}[{row.pop('partition')}]@{row.pop('offset')} {row.pop('record')}"
    return head + " " + " ".join(f"{k}={v}" for k, v in row.items() if v not in (None, [], ""))


def cmd_bless(args: argparse.Namespace) -> int:
    from ..clients.blessing import raise_if_rejected, request_blessing, single_suite

    timespan = Timespan.from_times(args.begin_date, args.end_date)
    suite = single_suite(
        args.collection,
        args.dataset_type,
        args.run,
        data_ids=[parse_data_id_args(items) for items in args.data_id],
        begin_ns=timespan.begin,
        end_ns=timespan.end,
        reason=args.reason,
    )
    bus = kafka_bus("obsbus-bless")
    try:
        outcome = request_blessing(bus, suite, timeout_s=args.timeout)
    finally:
        bus.close()
    raise_if_rejected(outcome)
    print(f"blessed into {outcome.collection}: {outcome.message}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..handlers.replay import replay
    from .opening import open_butler

    bus = kafka_bus("obsbus-replay")
    try:
        with open_butler(args.repo, args.actor) as butler:
            counts = replay(bus, butler.registry)
    finally:
        bus.close()
    notes = [f"{counts.refused} refused" if counts.refused else ""]
    notes.append(f"{counts.skipped} dead-lettered live, skipped" if counts.skipped else "")
    shown = "; ".join(n for n in notes if n)
    print(
        f"replayed {counts.applied} command(s) into {args.repo}" + (f" ({shown})" if shown else "")
    )
    if counts.refused:
        print(
            "refused commands may have been refused live too; if not, the fresh repository "
            "lacked something (register its instruments first: `obsbus register-instrument`)"
        )
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from ..butler import Butler
    from ..registry.dump import canonical_dump

    with Butler.open(args.repo) as butler:
        dump = canonical_dump(butler.registry, history=args.history)
        json.dump(dump, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0
