"""Registry benchmark: obsbus, and daf_butler side by side when it is importable.

A benchmark, not a test: it prints figures and ratios and asserts no thresholds (this kind of
machine is noisy; compare ratios measured in one run, not absolute numbers across runs).

    python bench/registry_bench.py [--files N] [--lookups N] [--pairs N]
                                   [--backend sqlite|postgresql] [--rounds N] [--budget S]
                                   [--detectors N] [--ranges N] [--registry-find]

Measured, each on the same synthetic repository content for both libraries:

1. ingest of N tiny YAML files through ``Butler.ingest`` (transfer "copy" and "direct");
2. N single calibration lookups (``Registry.find_calibration`` for (instrument, detector) at an
   instant, through a CHAINED collection holding a CALIBRATION collection with several
   validity ranges per detector);
3. one bulk lookup for N (exposure, detector) pairs (``Registry.with_exposures`` +
   ``Registry.find_calibrations_bulk``).

Both libraries' answers are checked against the answers computed in Python from the scenario,
so a fast wrong answer cannot go unnoticed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.butler import Butler, FileToIngest
from services.core.timespan import Timespan, time_to_ns
from services.instruments import DetectorDef, FilterDef, Instrument
from services.registry.collections import CollectionType
from services.registry.datasets import DatasetType
from services.registry.registry import CalibrationMatch

PG_ENV = "OBSBUS_TEST_POSTGRES_URL"
NS = 1_000_000_000
DAY_NS = 86_400 * NS
SLOT_NS = 120 * NS  # one exposure every two minutes
EXPOSURE_OFFSET_NS = 10 * NS  # exposures start 10 s into their slot ...
EXPOSURE_NS = 30 * NS  # ... and last 30 s, so they never straddle a slot boundary
FIRST_NIGHT = datetime.date(2026, 1, 10)
WARM_UP = 50  # items of each measurement run once, untimed, before the timed rounds

# Answer key of a lookup: (detector, index of the validity range), or None for "not found".
Answer = tuple[int, int] | None


# --- the scenario: one description of the repository content, used by both libraries -------------


@dataclass(frozen=True)
class Exposure:
    id: int
    begin_ns: int
    end_ns: int
    physical_filter: str
    day_obs: int
    group: str
    seq_num: int


@dataclass(frozen=True)
class Certification:
    """One bias, for one detector, certified for [begin_ns, end_ns)."""

    detector: int
    range_index: int
    run: str  # biases of one detector differ by run: a RUN holds one per data ID
    begin_ns: int
    end_ns: int


@dataclass
class Scenario:
    instrument: str
    detectors: list[int]
    filters: list[tuple[str, str]]  # (physical_filter, band)
    nights: list[tuple[int, int, int]]  # (day_obs, begin_ns, end_ns)
    exposures: list[Exposure]
    certifications: list[Certification]
    lookups: list[tuple[int, int]]  # (detector, instant in TAI ns)
    pairs: list[tuple[int, int]]  # (exposure, detector)
    files: list[tuple[Path, int, int]]  # (path, exposure, detector)
    calib_collection: str
    chain: str
    bias_type: str = "bias"
    file_type: str = "bench_meta"
    expected_lookups: list[Answer] = field(default_factory=list)
    expected_pairs: list[Answer] = field(default_factory=list)


class BenchCam(Instrument):
    """The benchmark's instrument; ``with_detectors`` gives it the scenario's detectors."""

    name = "BenchCam"
    filters = (FilterDef("bench_g", "g"), FilterDef("bench_r", "r"), FilterDef("bench_i", "i"))

    @classmethod
    def with_detectors(cls, ids: Sequence[int]) -> type[Instrument]:
        defs = tuple(DetectorDef(d, f"D{d:03d}", f"SN-{10000 + d}") for d in ids)
        return type(cls.__name__, (cls,), {"detectors": defs, "__module__": cls.__module__})


def t0_ns() -> int:
    from astropy.time import Time

    return time_to_ns(Time(FIRST_NIGHT.isoformat(), scale="tai"))


def make_scenario(
    workdir: Path, *, files: int, lookups: int, pairs: int, detectors: int, ranges: int, seed: int
) -> Scenario:
    rng = random.Random(seed)
    start = t0_ns()
    dets = list(range(detectors))
    n_exposures = max(1, -(-max(pairs, files) // detectors))
    filters = [(f.physical_filter, f.band) for f in BenchCam.filters]

    exposures: list[Exposure] = []
    nights: dict[int, tuple[int, int, int]] = {}
    for i in range(n_exposures):
        begin = start + i * SLOT_NS + EXPOSURE_OFFSET_NS
        night = (begin - start) // DAY_NS
        day_obs = int((FIRST_NIGHT + datetime.timedelta(days=night)).strftime("%Y%m%d"))
        nights[day_obs] = (day_obs, start + night * DAY_NS, start + (night + 1) * DAY_NS)
        exposure_id = 2026_0000_0000 + i
        exposures.append(
            Exposure(
                exposure_id,
                begin,
                begin + EXPOSURE_NS,
                filters[i % len(filters)][0],
                day_obs,
                f"grp{i // 2}",
                i,
            )
        )

    # Validity ranges: boundaries on exposure slot edges (never inside an exposure), staggered
    # per detector; the first and last ranges reach 30 days beyond the exposures.
    end = start + n_exposures * SLOT_NS
    certifications: list[Certification] = []
    for det in dets:
        slots: list[int] = []
        for k in range(1, ranges):
            slot = round(k * n_exposures / ranges) + det % 3 - 1
            if 0 < slot < n_exposures and (not slots or slot > slots[-1]):
                slots.append(slot)
        edges = [start - 30 * DAY_NS, *(start + s * SLOT_NS for s in slots), end + 30 * DAY_NS]
        for k, (b, e) in enumerate(itertools.pairwise(edges)):
            certifications.append(Certification(det, k, f"BenchCam/calib/bias/r{k}", b, e))

    lookup_list = [(rng.choice(dets), rng.randrange(start, end)) for _ in range(lookups)]
    all_pairs = [(e.id, d) for e in exposures for d in dets]
    pair_list = all_pairs[:pairs]
    file_list: list[tuple[Path, int, int]] = []
    src = workdir / "files"
    src.mkdir()
    for n, (exposure_id, det) in enumerate(all_pairs[:files]):
        path = src / f"meta_{exposure_id}_{det:03d}.yaml"
        path.write_text(f"exposure: {exposure_id}\ndetector: {det}\nvalue: {n}\n")
        file_list.append((path, exposure_id, det))

    scenario = Scenario(
        instrument=BenchCam.name,
        detectors=dets,
        filters=filters,
        nights=sorted(nights.values()),
        exposures=exposures,
        certifications=certifications,
        lookups=lookup_list,
        pairs=pair_list,
        files=file_list,
        calib_collection="BenchCam/calib/bench",
        chain="BenchCam/calib",
    )
    by_det: dict[int, list[Certification]] = {}
    for c in certifications:
        by_det.setdefault(c.detector, []).append(c)

    def answer(det: int, begin: int, end: int) -> Answer:
        hits = [c for c in by_det[det] if c.begin_ns < end and c.end_ns > begin]
        assert len(hits) == 1, "scenario bug: a lookup must match exactly one range"
        return (det, hits[0].range_index)

    scenario.expected_lookups = [answer(d, t, t + 1) for d, t in lookup_list]
    exposure_by_id = {e.id: e for e in exposures}
    scenario.expected_pairs = [
        answer(d, exposure_by_id[x].begin_ns, exposure_by_id[x].end_ns) for x, d in pair_list
    ]
    return scenario


# --- what each library's side does ---------------------------------------------------------------

# One measurement: (seconds, answers) for the first ``limit`` items (all when None).
Timed = Callable[[int | None], tuple[float, list[Answer]]]


class Side(Protocol):
    label: str
    backend: str  # database actually used
    notes: dict[str, float]  # sub-timings of the last bulk lookup, printed for information

    def setup(self) -> None: ...

    def ingest(self, transfer: str, round_: int) -> float:
        """Seconds to ingest all the scenario's files with ``transfer`` (into a new run)."""
        ...

    def lookup_variants(self) -> dict[str, Timed]: ...

    def bulk_variants(self) -> dict[str, Timed]: ...

    def close(self) -> None: ...


class ObsbusSide:
    label = "obsbus"

    def __init__(self, scenario: Scenario, root: Path, db: str | None) -> None:
        self.s = scenario
        self.root = root
        self.db = db
        self.namespace = f"bench_{uuid.uuid4().hex[:12]}" if db else None
        self.backend = "postgresql" if db else "sqlite"
        self.butler: Butler | None = None
        self._answer_of: dict[uuid.UUID, tuple[int, int]] = {}
        self.notes: dict[str, float] = {}

    @property
    def b(self) -> Butler:
        assert self.butler is not None
        return self.butler

    def setup(self) -> None:
        s = self.s
        self.butler = Butler.create(
            self.root, db=self.db, db_namespace=self.namespace, actor="bench"
        )
        reg = self.b.registry
        BenchCam.with_detectors(s.detectors).register(reg)
        with reg.transaction():
            reg.insert_dimension_records(
                "day_obs",
                [
                    {"instrument": s.instrument, "id": d, "timespan": Timespan(b, e)}
                    for d, b, e in s.nights
                ],
            )
            reg.insert_dimension_records(
                "group",
                [
                    {"instrument": s.instrument, "name": g}
                    for g in sorted({e.group for e in s.exposures})
                ],
            )
            reg.insert_dimension_records(
                "exposure",
                [
                    {
                        "instrument": s.instrument,
                        "id": e.id,
                        "obs_id": f"{s.instrument}_{e.id}",
                        "physical_filter": e.physical_filter,
                        "group": e.group,
                        "day_obs": e.day_obs,
                        "exposure_time": 30.0,
                        "dark_time": 30.0,
                        "observation_type": "science",
                        "seq_num": e.seq_num,
                        "timespan": Timespan(e.begin_ns, e.end_ns),
                    }
                    for e in s.exposures
                ],
            )
            bias = DatasetType(s.bias_type, ("instrument", "detector"), "Image", True)
            reg.register_dataset_type(bias)
            reg.register_dataset_type(
                DatasetType(
                    s.file_type, ("instrument", "exposure", "detector"), "StructuredDataDict"
                )
            )
            refs = [
                reg.make_ref(bias, {"instrument": s.instrument, "detector": c.detector}, c.run)
                for c in s.certifications
            ]
            reg.insert_datasets(refs)
            reg.register_collection(s.calib_collection, CollectionType.CALIBRATION)
            for c, ref in zip(s.certifications, refs, strict=True):
                reg.certify(s.calib_collection, [ref], Timespan(c.begin_ns, c.end_ns))
                self._answer_of[ref.id] = (c.detector, c.range_index)
            reg.set_chain(s.chain, [s.calib_collection])

    def ingest(self, transfer: str, round_: int) -> float:
        s, reg = self.s, self.b.registry
        run = f"BenchCam/ingest/{transfer}/{round_}"
        reg.register_run(run)
        dt = reg.get_dataset_type(s.file_type)
        files = [
            FileToIngest(
                path,
                reg.make_ref(dt, {"instrument": s.instrument, "exposure": x, "detector": d}, run),
            )
            for path, x, d in s.files
        ]
        t = time.perf_counter()
        outcomes = self.b.ingest(files, transfer=transfer)
        elapsed = time.perf_counter() - t
        assert outcomes.count("inserted") == len(files), "obsbus ingest skipped files"
        return elapsed

    def _answer(self, match: CalibrationMatch | None) -> Answer:
        return None if match is None else self._answer_of[match.ref.id]

    def lookup_variants(self) -> dict[str, Timed]:
        return {"obsbus find_calibration": self._lookups}

    def bulk_variants(self) -> dict[str, Timed]:
        return {"obsbus with_exposures + find_calibrations_bulk": self._bulk}

    def _lookups(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        s, reg = self.s, self.b.registry
        instrument, chain = s.instrument, [s.chain]
        queries = [
            ({"instrument": instrument, "detector": d}, Timespan(t, t + 1))
            for d, t in s.lookups[:limit]
        ]
        t = time.perf_counter()
        found = [reg.find_calibration(s.bias_type, q, chain, ts) for q, ts in queries]
        elapsed = time.perf_counter() - t
        return elapsed, [self._answer(m) for m in found]

    def _bulk(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        s, reg = self.s, self.b.registry
        data_ids = [
            {"instrument": s.instrument, "exposure": x, "detector": d} for x, d in s.pairs[:limit]
        ]
        t = time.perf_counter()
        queries = reg.with_exposures(data_ids)
        t_expand = time.perf_counter()
        found = reg.find_calibrations_bulk(s.bias_type, [s.chain], queries)
        t_end = time.perf_counter()
        self.notes["with_exposures s"] = t_expand - t
        self.notes["find_calibrations_bulk s"] = t_end - t_expand
        return t_end - t, [self._answer(m) for m in found]

    def close(self) -> None:
        if self.butler is not None:
            self.butler.close()
        if self.db and self.namespace:
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.db)
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.namespace}" CASCADE')
            engine.dispose()


# --- running and reporting -----------------------------------------------------------------------


@dataclass
class Figure:
    title: str
    unit: str  # of the rate (higher is better)
    per_item: str  # of the time per item
    work: int  # items per measurement
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, seconds: float) -> None:
        self.seconds.setdefault(label, []).append(seconds)

    def median(self, label: str) -> float:
        return statistics.median(self.seconds[label])

    def report(self) -> None:
        print(f"\n[{self.title}]")
        width = max(len(label) for label in self.seconds)
        for label, runs in self.seconds.items():
            med = self.median(label)
            spread = (
                f"  (median of {len(runs)} rounds; best {min(runs):.3f} s)" if len(runs) > 1 else ""
            )
            print(f"  {label:<{width}}  {self.work / med:12,.0f} {self.unit}")
            print(f"  {label:<{width}}  {med * 1e6 / self.work:12,.1f} {self.per_item}")
            print(f"  {label:<{width}}  {med:12.3f} s{spread}")
        base, *others = self.seconds
        base_lib, _, base_call = base.partition(" ")
        for other in others:
            other_lib, _, other_call = other.partition(" ")
            ratio = self.median(other) / self.median(base)
            print(
                f"  ratio {base_lib}/{other_lib}: {ratio:.2f}x {self.unit}"
                f"  ({base_call} vs {other_call})"
            )


def check(label: str, got: Sequence[Answer], expected: Sequence[Answer]) -> None:
    wrong = sum(g != e for g, e in zip(got, expected, strict=True))
    if wrong:
        raise SystemExit(f"{label}: {wrong} of {len(expected)} answers are wrong")


def measure(s: Scenario, sides: Sequence[Side], rounds: int, deadline: float) -> list[Figure]:
    """Run every measurement ``rounds`` times; a round after the first starts only before
    ``deadline`` (a perf_counter value), so a busy machine cannot stretch the run unboundedly.
    """

    def more(round_: int, what: str) -> bool:
        if round_ == 0 or time.perf_counter() < deadline:
            return True
        print(f"time budget spent: {what} measured in {round_} round(s), not {rounds}")
        return False

    figures = [
        Figure(f"ingest of {len(s.files)} files, transfer={t}", "files/s", "µs/file", len(s.files))
        for t in ("copy", "direct")
    ]
    for round_ in range(rounds if s.files else 0):  # each round ingests into new runs
        if not more(round_, "ingest"):
            break
        for fig, transfer in zip(figures, ("copy", "direct"), strict=True):
            for side in sides:
                fig.add(f"{side.label} Butler.ingest", side.ingest(transfer, round_))

    look = Figure(
        f"{len(s.lookups)} single calibration lookups through a CHAINED collection",
        "lookups/s",
        "µs/lookup",
        len(s.lookups),
    )
    bulk = Figure(
        f"bulk calibration lookup of {len(s.pairs)} (exposure, detector) pairs",
        "pairs/s",
        "µs/pair",
        len(s.pairs),
    )
    timed = [
        (fig, expected, label, fn)
        for side in sides
        for fig, expected, variants in (
            (look, s.expected_lookups, side.lookup_variants()),
            (bulk, s.expected_pairs, side.bulk_variants()),
        )
        for label, fn in variants.items()
        if fig.work > 0
    ]
    for _fig, _expected, _label, fn in timed:  # warm-up: caches, imports, prepared statements
        fn(WARM_UP)
    for round_ in range(rounds):  # alternate within each round: noise hits every variant alike
        if not more(round_, "lookups and bulk"):
            break
        for fig, expected, label, fn in timed:
            seconds, answers = fn(None)
            check(label, answers, expected)
            fig.add(label, seconds)
    return [fig for fig in (*figures, look, bulk) if fig.seconds]


def run(args: argparse.Namespace) -> int:
    db: str | None = None
    if args.backend == "postgresql":
        db = os.environ.get(PG_ENV)
        if not db:
            print(f"--backend postgresql needs {PG_ENV} (e.g. `bash deploy/postgres.sh url`)")
            return 2
    started = time.perf_counter()
    daf: Any = None
    try:
        daf = importlib.import_module("_daf_butler_side")  # bench/ is sys.path[0]
    except ImportError as err:
        print(f"lsst.daf.butler is not importable ({err}): running obsbus alone")

    print(
        f"obsbus registry benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, obsbus on {args.backend}"
    )
    print(
        f"scenario: {args.files} files, {args.lookups} lookups, {args.pairs} pairs, "
        f"{args.detectors} detectors x {args.ranges} validity ranges, {args.rounds} rounds, "
        "sides alternating within each round"
    )
    if daf is not None:
        print(f"daf_butler {daf.version()} runs the same work in this process (default universe)")
    with tempfile.TemporaryDirectory(prefix="obsbus-bench-") as tmp:
        work = Path(tmp)
        s = make_scenario(
            work,
            files=args.files,
            lookups=args.lookups,
            pairs=args.pairs,
            detectors=args.detectors,
            ranges=args.ranges,
            seed=args.seed,
        )
        sides: list[Side] = [ObsbusSide(s, work / "obsbus", db)]
        if daf is not None:
            sides.append(
                daf.DafButlerSide(s, work / "daf_butler", db, registry_find=args.registry_find)
            )
        try:
            for side in sides:
                t = time.perf_counter()
                side.setup()
                print(f"setup {side.label} ({side.backend}): {time.perf_counter() - t:.1f} s")
            deadline = started + args.budget
            for fig in measure(s, sides, args.rounds, deadline):
                fig.report()
            for side in sides:
                for name, value in side.notes.items():
                    print(f"  note: {side.label} {name} (last round) = {value:.3f}")
        finally:
            for side in sides:
                side.close()
    print(f"\ntotal wall time: {time.perf_counter() - started:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="obsbus registry benchmark (see bench/README.md)")
    parser.add_argument("--files", type=int, default=2000, help="files to ingest (default 2000)")
    parser.add_argument("--lookups", type=int, default=1000, help="single lookups (default 1000)")
    parser.add_argument("--pairs", type=int, default=10000, help="bulk pairs (default 10000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--detectors", type=int, default=20, help="detectors (default 20)")
    parser.add_argument("--ranges", type=int, default=5, help="validity ranges per detector")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement")
    parser.add_argument(
        "--budget",
        type=float,
        default=90.0,
        help="seconds after which no further round is started (default 90)",
    )
    parser.add_argument(
        "--registry-find",
        action="store_true",
        help="also time daf_butler's registry.findDataset (butler.find_dataset wraps it)",
    )
    parser.add_argument("--seed", type=int, default=20261125)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
