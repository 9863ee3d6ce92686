"""How fast the dashboard catches up on a night's topics (a benchmark, not a test).

Writes ``--exposures`` SimCam-like exposures (205 files each: one RawArrival and one
IngestOutcome per file, so 100,000 events by default) to fresh namespaced topics on the real
broker, then reads them three ways, side by side in one run:

- floor: the bus consumer reading the bytes (no decoding): what the broker and kafka-python
  cost;
- decode: the same, each message decoded to its typed record;
- dashboard: ``Dashboard.read`` (decode and fold into the night's view) until caught up,
  then one snapshot of the page.

It prints seconds, events/s and each figure's ratio to the floor. Asserts no threshold.

    .venv/bin/python bench/dashboard_catchup.py [--exposures 244]
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
import uuid

from _bus_common import NS, broker_address, delete_topics, log

from services.bus.admin import ensure_topics
from services.bus.config import KafkaSettings
from services.bus.topics import ALL_TOPICS, INGEST_OUTCOMES, RAW_ARRIVALS, exposure_key
from services.bus.transport import KafkaBus
from services.core.timespan import now_ns
from services.messages import IngestOutcome, RawArrival, decode
from services.web.dashboard import SERVICE, Dashboard

DETECTORS = 205


def write_night(bus: KafkaBus, exposures: int) -> int:
    start = now_ns() - exposures * 30 * NS
    sent = 0
    for e in range(exposures):
        exposure = 2024112500000 + e + 1
        folder = f"/landing/20241125/{e + 1:06d}"
        for d in range(DETECTORS):
            path = f"{folder}/SC_O_20241125_{e + 1:06d}_{d}.fits"
            landed = start + e * 30 * NS + d * 1_000_000
            arrival = RawArrival(f"{exposure}-{d}", path, "/landing", 9 * 2880, 0, landed, "w")
            bus.send(RAW_ARRIVALS.name, path.encode(), arrival.encode())
            outcome = IngestOutcome(
                path,
                "ingested",
                instrument="SimCam",
                exposure=exposure,
                detectors=(d,),
                dataset_ids=(str(uuid.uuid4()),),
                arrival_id=arrival.arrival_id,
                detected_at_ns=landed,
                finished_at_ns=landed + 400_000_000,
            )
            bus.send(
                INGEST_OUTCOMES.name, exposure_key("SimCam", exposure).encode(), outcome.encode()
            )
            sent += 2
        bus.flush()
    return sent


def read_all(bus: KafkaBus, total: int, decoding: bool) -> float:
    consumer = bus.consumer(f"bench-{uuid.uuid4().hex[:8]}", [t.name for t in SERVICE.reads])
    started, seen = time.perf_counter(), 0
    try:
        while seen < total:
            batch = consumer.poll(0.5, SERVICE.max_records)
            if decoding:
                for d in batch:
                    decode(d.value)
            seen += len(batch)
    finally:
        consumer.close()
    return time.perf_counter() - started


def dashboard_catch_up(bus: KafkaBus, total: int) -> tuple[float, float, float]:
    board = Dashboard(bus, None, window_s=365 * 86400)
    stop = threading.Event()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    thread = threading.Thread(target=board.read, args=(stop,), daemon=True)
    thread.start()
    while board.view.messages < total:
        time.sleep(0.01)
    took = time.perf_counter() - started
    snap_started = time.perf_counter()
    snap = board.snapshot()
    snap_s = time.perf_counter() - snap_started
    stop.set()
    thread.join(10)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert snap["totals"]["ingested"] == total // 2, snap["totals"]  # every file counted
    return took, snap_s, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=244)
    args = parser.parse_args()
    bootstrap = broker_address()
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    settings = KafkaSettings(bootstrap=bootstrap, namespace=namespace)
    ensure_topics(bootstrap, settings.topics(), 1)
    bus = settings.bus("obsbus-dashboard-bench")
    try:
        t0 = time.perf_counter()
        total = write_night(bus, args.exposures)
        log(
            f"wrote {total:,} events ({args.exposures} exposures) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        floor = read_all(bus, total, decoding=False)
        decoding = read_all(bus, total, decoding=True)
        catch_up, snap_s, cpu = dashboard_catch_up(bus, total)
        log("| reading all | seconds | events/s | x floor |")
        log("|---|---|---|---|")
        for name, s in (
            ("floor (bytes)", floor),
            ("decoded", decoding),
            ("dashboard (decode + fold)", catch_up),
        ):
            log(f"| {name} | {s:.2f} | {total / s:,.0f} | {s / floor:.2f} |")
        log(
            f"dashboard CPU while catching up: {cpu:.2f} s ({100 * cpu / catch_up:.0f}% of a "
            f"core); first snapshot of the page: {snap_s * 1000:.0f} ms"
        )
    finally:
        bus.close()
        delete_topics(bootstrap, [namespace + t.name for t in ALL_TOPICS])


if __name__ == "__main__":
    main()
