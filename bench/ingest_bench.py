"""Raw ingest benchmark: obsbus, and daf_butler side by side when it is importable.

A benchmark, not a test: it prints figures and ratios and asserts no thresholds (this kind of
machine is noisy; compare ratios measured in one run, not absolute numbers across runs).

    python bench/ingest_bench.py [--exposures N] [--detectors N] [--backend sqlite|postgresql]
                                 [--rounds N] [--budget S] [--no-subprocess] [--profile N]

A simulated SimCam night (``generate_night``: N exposures x 205 one-detector FITS files) is
ingested, from scratch into a new repository each time, for transfer "copy" and "direct":

* obsbus, through what ``obsbus ingest-raws`` runs: ``configure_offline_translation()``, then
  ``RawIngester(butler, transfer=...).ingest(find_raw_files([dir]))``; prepare (read + translate
  the header) and write (one transaction per exposure: records, datasets, files) interleave.
* daf_butler, doing what obs_base's ``RawIngestTask`` does (obs_base is not on PyPI): every
  header read with astropy and translated by ``ObservationInfo(header,
  translator_class=SimCamTranslator)`` (the same translator), files grouped by exposure, the
  exposure's records built (day_obs, group, exposure as ``makeExposureRecordFromObsInfo``),
  data IDs expanded with ``registry.expandDataId``; then per exposure
  ``registry.syncDimensionData`` for day_obs, group and exposure and one ``butler.ingest`` of
  the exposure's files (``DATAID_TYPE_RUN`` dataset IDs, as obs_base).

Also timed once: ``obsbus ingest-raws`` as a subprocess (interpreter start and imports
included). See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.butler import Butler
from services.ingest.headers import configure_offline_translation
from services.ingest.raws import PreparedFile, RawIngester, find_raw_files
from services.instruments.simcam import SimCam, SimCamTranslator, generate_night
from services.messages import IngestOutcome

PG_ENV = "OBSBUS_TEST_POSTGRES_URL"
TRANSFERS = ("copy", "direct")
DAF_RUN = "SimCam/raw/all"  # obs_base's default raw run for the instrument, as obsbus's
WARM_UP_FILES = 10  # files each side ingests, untimed, before the timed rounds
TARGET = 2.0  # the target: obsbus ingest >= 2x daf_butler's (reported, not asserted)


# --- databases -----------------------------------------------------------------------------------


class Databases:
    """SQLite files inside each repository, or one fresh schema per repository on the
    PostgreSQL server of ``OBSBUS_TEST_POSTGRES_URL``; every schema made is dropped at the end.
    """

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.schemas: list[str] = []

    @property
    def name(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def new_schema(self, prefix: str) -> str | None:
        if not self.url:
            return None
        schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        return schema

    def drop(self, schema: str | None) -> None:
        if not (self.url and schema):
            return
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            engine.dispose()
        if schema in self.schemas:
            self.schemas.remove(schema)

    def drop_all(self) -> None:
        for schema in list(self.schemas):
            self.drop(schema)


# --- one timed ingest ----------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float  # the whole ingest, files found to last file landed
    prepare: float  # reading and translating headers, building records (no repository access)
    write: float  # database and datastore: records, datasets, file transfers


class _TimedIngester(RawIngester):
    """RawIngester that adds up the time spent in ``write`` (one call per exposure); nothing
    else differs. Everything outside ``write`` is ``prepare`` (and finding the files)."""

    write_seconds = 0.0

    def write(self, batch: list[PreparedFile]) -> list[IngestOutcome]:
        t = time.perf_counter()
        try:
            return super().write(batch)
        finally:
            self.write_seconds += time.perf_counter() - t


class ObsbusSide:
    label = "obsbus"

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.backend = dbs.name

    def create_repo(self, root: Path) -> tuple[Butler, str | None]:
        schema = self.dbs.new_schema("ingest_obsbus")
        butler = Butler.create(root, db=self.dbs.url, db_namespace=schema, actor="bench")
        SimCam.register(butler.registry)
        return butler, schema

    def ingest(self, raw_dir: Path, root: Path, transfer: str, expected: int) -> Timing:
        butler, schema = self.create_repo(root)
        try:
            t = time.perf_counter()
            ingester = _TimedIngester(butler, transfer=transfer)
            setup = time.perf_counter() - t
            outcomes = list(ingester.ingest(find_raw_files([raw_dir])))
            elapsed = time.perf_counter() - t
        finally:
            butler.close()
            self.dbs.drop(schema)
        ingested = sum(o.status == "ingested" for o in outcomes)
        if ingested != expected:
            failed = [o for o in outcomes if o.status != "ingested"][:3]
            raise SystemExit(f"obsbus ingested {ingested} of {expected} files: {failed}")
        write = setup + ingester.write_seconds
        return Timing(elapsed, elapsed - write, write)

    def profile(self, raw_dir: Path, root: Path, transfer: str, top: int) -> str:
        """cProfile of one ingest (not a timed figure), top functions by cumulative time."""
        butler, schema = self.create_repo(root)
        profiler = cProfile.Profile()
        try:
            ingester = RawIngester(butler, transfer=transfer)
            files = find_raw_files([raw_dir])
            profiler.enable()
            for _ in ingester.ingest(files):
                pass
            profiler.disable()
        finally:
            butler.close()
            self.dbs.drop(schema)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
        return out.getvalue()


class DafButlerSide:
    """What obs_base's RawIngestTask does, on lsst.daf.butler's public API (imported lazily:
    this module must import where daf_butler is not installed)."""

    label = "daf_butler"

    def __init__(self, dbs: Databases) -> None:
        import lsst.daf.butler as dafb
        from astropy.io import fits

        logging.getLogger("lsst").setLevel(logging.WARNING)
        self.d: Any = dafb
        self.dbs = dbs
        self.backend = dbs.name
        self.use_db = dbs.url is not None

        def read_from_local_file(
            self: Any, path: str, component: str | None = None, expected_size: int = -1
        ) -> Any:
            return fits.getdata(path)

        # No daf_butler formatter accepts ".fits" (obs_base's raw formatters need afw), and a
        # copy ingest asks the formatter to validate the file's extension: a minimal FITS
        # formatter. Only its name is stored at ingest; nothing here reads the files back.
        self.formatter: Any = type(
            "FitsRawFormatter",
            (dafb.FormatterV2,),
            {
                "__module__": __name__,
                "supported_extensions": frozenset({".fits"}),
                "can_read_from_local_file": True,
                "read_from_local_file": read_from_local_file,
            },
        )

    def version(self) -> str:
        from importlib.metadata import version

        return version("lsst-daf-butler")

    def create_repo(self, root: Path) -> tuple[Any, str | None]:
        d = self.d
        schema = None
        if self.use_db:
            schema = self.dbs.new_schema("ingest_daf")
            config = d.Config({"registry": {"db": self.dbs.url, "namespace": schema}})
            try:
                d.Butler.makeRepo(str(root), config=config)
            except Exception as err:  # any failure: SQLite from now on, and say so
                print(f"daf_butler on PostgreSQL failed ({type(err).__name__}: {err}); SQLite")
                self.dbs.drop(schema)
                shutil.rmtree(root, ignore_errors=True)
                self.use_db, self.backend, schema = False, "sqlite", None
                d.Butler.makeRepo(str(root))
        else:
            d.Butler.makeRepo(str(root))
        butler = d.Butler.from_config(str(root), writeable=True)
        self._register_instrument(butler)
        return butler, schema

    @staticmethod
    def _register_instrument(butler: Any) -> None:
        """obs_base's Instrument.register: instrument, physical filters, detectors."""
        reg, name = butler.registry, SimCam.name
        with butler.transaction():
            reg.syncDimensionData(
                "instrument",
                {
                    "name": name,
                    "class_name": SimCam.class_path(),
                    "detector_max": max(d.id for d in SimCam.detectors) + 1,
                    "exposure_max": SimCam.exposure_max,
                    "visit_max": SimCam.visit_max,
                    "visit_system": 0,
                },
            )
            for f in SimCam.filters:
                reg.syncDimensionData(
                    "physical_filter",
                    {"instrument": name, "name": f.physical_filter, "band": f.band},
                )
            for det in SimCam.detectors:
                raft, _, slot = det.full_name.partition("_")
                reg.syncDimensionData(
                    "detector",
                    {
                        "instrument": name,
                        "id": det.id,
                        "full_name": det.full_name,
                        "name_in_raft": slot,
                        "raft": raft,
                        "purpose": det.purpose.upper(),
                    },
                )

    def ingest(self, raw_dir: Path, root: Path, transfer: str, expected: int) -> Timing:
        butler, schema = self.create_repo(root)
        try:
            t = time.perf_counter()
            prepare = self._ingest(butler, raw_dir, transfer)
            elapsed = time.perf_counter() - t
            found = len(butler.query_datasets("raw", collections=DAF_RUN, limit=None))
        finally:
            butler.close()
            self.dbs.drop(schema)
        if found != expected:
            raise SystemExit(f"daf_butler ingested {found} of {expected} files")
        return Timing(elapsed, prepare, elapsed - prepare)

    def _ingest(self, butler: Any, raw_dir: Path, transfer: str) -> float:
        """Ingest every raw under ``raw_dir``; returns the seconds spent reading and
        translating headers and building records (obs_base's ``prep`` before any database
        access), the rest being database and datastore work."""
        from astro_metadata_translator import ObservationInfo
        from astropy.io import fits

        d, reg, universe = self.d, butler.registry, butler.dimensions
        t = time.perf_counter()
        # extractMetadata, per file: header -> ObservationInfo -> minimal data ID.
        by_exposure: dict[int, list[tuple[Path, Any, Any]]] = {}
        for path in sorted(raw_dir.rglob("*.fits")):
            header = fits.getheader(path)
            info = ObservationInfo(header, translator_class=SimCamTranslator, filename=str(path))
            data_id = d.DataCoordinate.standardize(
                instrument=info.instrument,
                exposure=info.exposure_id,
                detector=info.detector_num,
                universe=universe,
            )
            by_exposure.setdefault(data_id["exposure"], []).append((path.resolve(), info, data_id))
        # groupByExposure: the exposure's records from its first file.
        exposures = [
            (files, self._exposure_records(universe, files[0][1])) for files in by_exposure.values()
        ]
        prepare = time.perf_counter() - t

        # ingestFiles: dataset type and run once, then one exposure at a time.
        raw = d.DatasetType(
            "raw", ("instrument", "exposure", "detector"), "Exposure", universe=universe
        )
        reg.registerDatasetType(raw)
        reg.registerCollection(DAF_RUN, d.CollectionType.RUN)
        for files, records in exposures:
            # expandDataIds: the exposure's data ID, then each file's with its records.
            exposure_id = reg.expandDataId(
                files[0][2].subset(universe["exposure"].minimal_group),
                records=records,  # the records about to be synced, not looked up
            )
            refs = [
                d.DatasetRef(
                    raw,
                    reg.expandDataId(data_id, records=exposure_id.records),
                    run=DAF_RUN,
                    id_generation_mode=d.DatasetIdGenEnum.DATAID_TYPE_RUN,
                )
                for _, _, data_id in files
            ]
            for element in ("day_obs", "group", "exposure"):  # dependencies first
                reg.syncDimensionData(element, records[element])
            butler.ingest(
                *(
                    d.FileDataset(str(path), ref, formatter=self.formatter)
                    for (path, _, _), ref in zip(files, refs, strict=True)
                ),
                transfer=transfer,
            )
        return prepare

    def _exposure_records(self, universe: Any, info: Any) -> dict[str, Any]:
        """obs_base's makeDependencyRecords (day_obs, group) and makeExposureRecordFromObsInfo
        in the default universe."""
        from astropy.time import Time, TimeDelta

        d = self.d
        day = str(int(info.observing_day))
        start = Time(f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00", scale="tai")
        if info.observing_day_offset is not None:
            start = start + info.observing_day_offset
        day_obs = universe["day_obs"].RecordClass(
            instrument=info.instrument,
            id=int(info.observing_day),
            timespan=d.Timespan(start, start + TimeDelta(1, format="jd")),
        )
        group = universe["group"].RecordClass(instrument=info.instrument, name=info.exposure_group)
        ra = dec = sky_angle = azimuth = zenith_angle = None
        if info.tracking_radec is not None:
            icrs = info.tracking_radec.icrs
            ra, dec = icrs.ra.degree, icrs.dec.degree
            if info.boresight_rotation_coord == "sky" and info.boresight_rotation_angle is not None:
                sky_angle = info.boresight_rotation_angle.degree
        if info.altaz_begin is not None:
            zenith_angle, azimuth = info.altaz_begin.zen.degree, info.altaz_begin.az.degree
        end = max(info.datetime_end, info.datetime_begin)
        exposure = universe["exposure"].RecordClass(
            instrument=info.instrument,
            id=info.exposure_id,
            obs_id=info.observation_id,
            day_obs=info.observing_day,
            group=info.exposure_group,
            physical_filter=info.physical_filter,
            exposure_time=info.exposure_time.to_value("s"),
            dark_time=None if info.dark_time is None else info.dark_time.to_value("s"),
            observation_type=info.observation_type,
            observation_reason=info.observation_reason,
            seq_num=info.observation_counter,
            seq_start=info.group_counter_start,
            seq_end=info.group_counter_end,
            target_name=info.object,
            science_program=info.science_program,
            tracking_ra=ra,
            tracking_dec=dec,
            sky_angle=sky_angle,
            azimuth=azimuth,
            zenith_angle=zenith_angle,
            has_simulated=info.has_simulated_content,
            can_see_sky=info.can_see_sky,
            timespan=d.Timespan(info.datetime_begin, end),
        )
        return {"day_obs": day_obs, "group": group, "exposure": exposure}


# --- the CLI as a subprocess ---------------------------------------------------------------------


def obsbus_command() -> list[str]:
    script = Path(sys.executable).with_name("obsbus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli.main"]


def time_cli(side: ObsbusSide, raw_dir: Path, work: Path, transfer: str) -> tuple[float, float]:
    """Seconds for ``obsbus ingest-raws REPO DIR`` on all files, and on an empty folder (the
    fixed cost: interpreter start, imports, opening the repository)."""
    empty = work / "empty"
    empty.mkdir(parents=True)
    seconds = []
    for name, folder in (("cli-empty", empty), ("cli", raw_dir)):
        butler, schema = side.create_repo(work / name)  # create + register-instrument, untimed
        butler.close()
        cmd = [*obsbus_command(), "ingest-raws", str(work / name), str(folder)]
        try:
            t = time.perf_counter()
            done = subprocess.run([*cmd, "--transfer", transfer], capture_output=True, text=True)
            seconds.append(time.perf_counter() - t)
        finally:
            side.dbs.drop(schema)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
        shutil.rmtree(work / name, ignore_errors=True)
    return seconds[1], seconds[0]


# --- running and reporting -----------------------------------------------------------------------


@dataclass
class Figures:
    files: int
    runs: dict[tuple[str, str], list[Timing]] = field(default_factory=dict)

    def add(self, label: str, transfer: str, timing: Timing) -> None:
        self.runs.setdefault((label, transfer), []).append(timing)

    def median(self, label: str, transfer: str) -> Timing:
        """The run of median total time (the lower middle of an even count), so that its
        prepare and write parts add up to the total shown."""
        runs = sorted(self.runs[(label, transfer)], key=lambda t: t.seconds)
        return runs[(len(runs) - 1) // 2]

    def rate(self, label: str, transfer: str) -> float:
        return self.files / self.median(label, transfer).seconds

    def report(self, labels: Sequence[str]) -> None:
        for transfer in TRANSFERS:
            print(f"\n[ingest of {self.files} raw files, transfer={transfer}]")
            for label in labels:
                runs = self.runs.get((label, transfer))
                if not runs:
                    continue
                med = self.median(label, transfer).seconds
                spread = f"median run of {len(runs)}, best {min(t.seconds for t in runs):.2f} s"
                print(
                    f"  {label:<10} {self.files / med:8.1f} files/s  "
                    f"{med * 1e3 / self.files:6.2f} ms/file  {med:6.2f} s  ({spread})"
                )
            for label in labels:
                if (label, transfer) not in self.runs:
                    continue
                m = self.median(label, transfer)
                prep, write, total = m.prepare, m.write, m.seconds
                print(
                    f"  {label:<10} breakdown: prepare (read+translate+records) "
                    f"{prep:5.2f} s = {prep * 1e3 / self.files:5.2f} ms/file "
                    f"({100 * prep / total:3.0f}%), write (database+datastore) "
                    f"{write:5.2f} s = {write * 1e3 / self.files:5.2f} ms/file "
                    f"({100 * write / total:3.0f}%)"
                )
        if len(labels) < 2 or not all((labels[1], t) in self.runs for t in TRANSFERS):
            return
        base, other = labels
        print(f"\n[ratios {base}/{other}, > 1 means {base} is faster; target >= {TARGET:g}x]")
        for transfer in TRANSFERS:
            ratio = self.rate(base, transfer) / self.rate(other, transfer)
            mine, theirs = self.median(base, transfer), self.median(other, transfer)
            prep, write = theirs.prepare / mine.prepare, theirs.write / mine.write
            verdict = "met" if ratio >= TARGET else "not met"
            print(
                f"  ingest {transfer:<6} {ratio:5.2f}x files/s ({verdict}); "
                f"prepare {prep:5.2f}x, write {write:5.2f}x"
            )


def run(args: argparse.Namespace) -> int:
    url: str | None = None
    if args.backend == "postgresql":
        url = os.environ.get(PG_ENV)
        if not url:
            print(f"--backend postgresql needs {PG_ENV} (e.g. `bash deploy/postgres.sh url`)")
            return 2
    started = time.perf_counter()
    dbs = Databases(url)
    configure_offline_translation()  # as `obsbus ingest-raws`; daf_butler's side needs it too
    sides: list[ObsbusSide | DafButlerSide] = [ObsbusSide(dbs)]
    try:
        sides.append(DafButlerSide(dbs))
    except ImportError as err:
        print(f"lsst.daf.butler is not importable ({err}): running obsbus alone")
    detectors = None if args.detectors is None else range(args.detectors)
    n_det = len(SimCam.detectors) if detectors is None else len(detectors)

    print(
        f"obsbus raw ingest benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.backend}"
    )
    daf = next((s for s in sides if isinstance(s, DafButlerSide)), None)
    if daf is not None:
        print(f"daf_butler {daf.version()} runs the same files in this process (obs_base's steps)")
    try:
        with tempfile.TemporaryDirectory(prefix="obsbus-ingest-bench-") as tmp:
            work = Path(tmp)
            raw_dir = work / "raw"
            t = time.perf_counter()
            paths = generate_night(raw_dir, args.exposures, seed=args.seed, detectors=detectors)
            print(
                f"SimCam night: {args.exposures} exposures x {n_det} detectors = {len(paths)} "
                f"files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB, written in "
                f"{time.perf_counter() - t:.1f} s; {args.rounds} rounds, sides alternating"
            )
            warm = work / "warm"
            warm.mkdir()
            warm_paths = paths[:WARM_UP_FILES]  # untimed: imports, translator and SQL caches
            for p in warm_paths:
                shutil.copy(p, warm / p.name)
            for side in sides:
                side.ingest(warm, work / f"warm-{side.label}", "copy", len(warm_paths))
            figures = Figures(len(paths))
            measure(args, sides, figures, raw_dir, work, started)
            print("\ndatabases used: " + ", ".join(f"{s.label} {s.backend}" for s in sides))
            figures.report([s.label for s in sides])
            obsbus = sides[0]
            assert isinstance(obsbus, ObsbusSide)
            if not args.no_subprocess:
                cli, empty = time_cli(obsbus, raw_dir, work / "cli", "copy")
                print(
                    f"\n[obsbus ingest-raws as a subprocess, transfer=copy, {obsbus.backend}]"
                    f"\n  {len(paths) / cli:8.1f} files/s  {cli:6.2f} s for {len(paths)} "
                    f"files, including {empty:.2f} s of fixed cost (the same command on an "
                    "empty folder: start-up, imports, opening the repository)"
                )
            if args.profile:
                print(f"\n[cProfile of one obsbus ingest, transfer=copy, top {args.profile}]")
                print(obsbus.profile(raw_dir, work / "profile", "copy", args.profile))
    finally:
        dbs.drop_all()
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    return 0


def measure(
    args: argparse.Namespace,
    sides: Sequence[ObsbusSide | DafButlerSide],
    figures: Figures,
    raw_dir: Path,
    work: Path,
    started: float,
) -> None:
    """``args.rounds`` rounds; in each, every side ingests everything with every transfer into
    a new repository. The order of the sides alternates between rounds; no round after the
    first starts once ``args.budget`` seconds have passed since ``started``."""
    for round_ in range(args.rounds):
        if round_ and time.perf_counter() - started > args.budget:
            print(f"time budget spent: {round_} round(s) measured, not {args.rounds}")
            break
        order = sides if round_ % 2 == 0 else list(reversed(sides))
        for transfer in TRANSFERS:
            for side in order:
                root = work / f"r{round_}-{side.label}-{transfer}"
                figures.add(
                    side.label, transfer, side.ingest(raw_dir, root, transfer, figures.files)
                )
                shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="obsbus raw ingest benchmark (bench/README.md)")
    parser.add_argument("--exposures", type=int, default=3, help="SimCam exposures (default 3)")
    parser.add_argument(
        "--detectors", type=int, help="detectors per exposure (default all 205 of SimCam)"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds after which no further round is started (default 120)",
    )
    parser.add_argument(
        "--no-subprocess", action="store_true", help="skip timing `obsbus ingest-raws`"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the top N functions of a cProfile of one obsbus ingest (copy)",
    )
    parser.add_argument("--seed", type=int, default=20261125)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
