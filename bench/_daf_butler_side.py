"""The daf_butler half of bench/registry_bench.py: the same scenario through lsst.daf.butler.

Importing this module fails with ImportError when lsst.daf.butler is not installed; the
benchmark then runs obsbus alone. Install it in a separate venv (see bench/README.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsst.daf.butler import (
    Butler,
    CollectionType,
    Config,
    DataCoordinate,
    DatasetRef,
    DatasetType,
    FileDataset,
    Timespan,
)

from services.core.timespan import ns_to_time

if TYPE_CHECKING:
    from registry_bench import Answer, Scenario, Timed

YAML_FORMATTER = "lsst.daf.butler.formatters.yaml.YamlFormatter"

logging.getLogger("lsst").setLevel(logging.WARNING)


def version() -> str:
    return _dist_version("lsst-daf-butler")


def _timespan(begin_ns: int, end_ns: int) -> Timespan:
    """A daf_butler timespan for [begin_ns, end_ns) TAI, through astropy (its public API)."""
    return Timespan(ns_to_time(begin_ns), ns_to_time(end_ns))


class DafButlerSide:
    def __init__(
        self, scenario: Scenario, root: Path, db: str | None, *, registry_find: bool = False
    ) -> None:
        self.s = scenario
        self.registry_find = registry_find
        self.root = root
        self.db = db
        self.namespace: str | None = None
        self.backend = "sqlite"
        self.butler: Any = None
        self._answer_of: dict[uuid.UUID, tuple[int, int]] = {}
        self.notes: dict[str, float] = {}
        self.label = "daf_butler"

    # --- repository --------------------------------------------------------------------------

    def _make_repo(self) -> None:
        if self.db:
            # Same PostgreSQL server as obsbus, in its own schema; SQLite if that fails.
            self.namespace = f"bench_daf_{uuid.uuid4().hex[:12]}"
            config = Config({"registry": {"db": self.db, "namespace": self.namespace}})
            try:
                Butler.makeRepo(str(self.root), config=config)
                self.backend = "postgresql"
                return
            except Exception as err:  # any failure: fall back, and say so
                print(f"daf_butler on PostgreSQL failed ({type(err).__name__}: {err}); SQLite")
                self._drop_schema()
                self.namespace = None
                self.root = self.root.with_name(self.root.name + "_sqlite")
        Butler.makeRepo(str(self.root))

    def setup(self) -> None:
        s = self.s
        self._make_repo()
        self.butler = Butler.from_config(str(self.root), writeable=True)
        reg = self.butler.registry
        n_det = max(s.detectors) + 1
        reg.insertDimensionData(
            "instrument",
            {
                "name": s.instrument,
                "class_name": "bench.BenchCam",
                "detector_max": n_det,
                "exposure_max": 2**40,
                "visit_max": 2**40,
                "visit_system": 0,
            },
        )
        reg.insertDimensionData(
            "physical_filter",
            *({"instrument": s.instrument, "name": f, "band": b} for f, b in s.filters),
        )
        reg.insertDimensionData(
            "detector",
            *(
                {
                    "instrument": s.instrument,
                    "id": d,
                    "full_name": f"D{d:03d}",
                    "name_in_raft": f"D{d:03d}",
                    "raft": None,
                    "purpose": "SCIENCE",
                }
                for d in s.detectors
            ),
        )
        reg.insertDimensionData(
            "day_obs",
            *(
                {"instrument": s.instrument, "id": d, "timespan": _timespan(b, e)}
                for d, b, e in s.nights
            ),
        )
        reg.insertDimensionData(
            "group",
            *(
                {"instrument": s.instrument, "name": g}
                for g in sorted({e.group for e in s.exposures})
            ),
        )
        reg.insertDimensionData(
            "exposure",
            *(
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
                    "timespan": _timespan(e.begin_ns, e.end_ns),
                }
                for e in s.exposures
            ),
        )
        universe = self.butler.dimensions
        self.bias = DatasetType(
            s.bias_type,
            ["instrument", "detector"],
            "StructuredDataDict",
            universe=universe,
            isCalibration=True,
        )
        self.meta = DatasetType(
            s.file_type,
            ["instrument", "exposure", "detector"],
            "StructuredDataDict",
            universe=universe,
        )
        reg.registerDatasetType(self.bias)
        reg.registerDatasetType(self.meta)
        reg.registerCollection(s.calib_collection, CollectionType.CALIBRATION)
        for run in sorted({c.run for c in s.certifications}):
            reg.registerRun(run)
        for c in s.certifications:
            (ref,) = reg.insertDatasets(
                self.bias, [{"instrument": s.instrument, "detector": c.detector}], run=c.run
            )
            reg.certify(s.calib_collection, [ref], _timespan(c.begin_ns, c.end_ns))
            self._answer_of[ref.id] = (c.detector, c.range_index)
        reg.registerCollection(s.chain, CollectionType.CHAINED)
        reg.setCollectionChain(s.chain, [s.calib_collection])

    # --- measurements ------------------------------------------------------------------------

    def ingest(self, transfer: str, round_: int) -> float:
        s = self.s
        run = f"BenchCam/ingest/{transfer}/{round_}"
        self.butler.registry.registerRun(run)
        datasets = [
            FileDataset(
                str(path),
                DatasetRef(
                    self.meta,
                    DataCoordinate.standardize(
                        instrument=s.instrument,
                        exposure=x,
                        detector=d,
                        dimensions=self.meta.dimensions,
                    ),
                    run=run,
                ),
                formatter=YAML_FORMATTER,
            )
            for path, x, d in s.files
        ]
        t = time.perf_counter()
        self.butler.ingest(*datasets, transfer=transfer)
        return time.perf_counter() - t

    def _answer(self, ref: DatasetRef | None) -> Answer:
        return None if ref is None else self._answer_of[ref.id]

    def _queries(self, limit: int | None) -> list[tuple[dict[str, Any], Timespan]]:
        s = self.s
        return [
            ({"instrument": s.instrument, "detector": d}, Timespan.fromInstant(ns_to_time(t)))
            for d, t in s.lookups[:limit]
        ]

    def lookup_variants(self) -> dict[str, Timed]:
        variants: dict[str, Timed] = {
            "daf_butler butler.find_dataset": self._find_dataset,
            "daf_butler butler.find_dataset in registry.caching_context()": self._find_cached,
        }
        if self.registry_find:
            variants["daf_butler registry.findDataset"] = self._registry_find
        return variants

    def bulk_variants(self) -> dict[str, Timed]:
        return {"daf_butler query().general, find_first": self._bulk}

    def _find_dataset(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        queries, chain, find = self._queries(limit), [self.s.chain], self.butler.find_dataset
        t = time.perf_counter()
        found = [find(self.s.bias_type, q, collections=chain, timespan=ts) for q, ts in queries]
        elapsed = time.perf_counter() - t
        return elapsed, [self._answer(r) for r in found]

    def _find_cached(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        """As _find_dataset, with collection and dataset-type caching on (as pipelines do)."""
        queries, chain, find = self._queries(limit), [self.s.chain], self.butler.find_dataset
        t = time.perf_counter()
        with self.butler.registry.caching_context():
            found = [find(self.s.bias_type, q, collections=chain, timespan=ts) for q, ts in queries]
        elapsed = time.perf_counter() - t
        return elapsed, [self._answer(r) for r in found]

    def _registry_find(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        queries, chain = self._queries(limit), [self.s.chain]
        find = self.butler.registry.findDataset
        t = time.perf_counter()
        found = [find(self.s.bias_type, q, collections=chain, timespan=ts) for q, ts in queries]
        elapsed = time.perf_counter() - t
        return elapsed, [self._answer(r) for r in found]

    def _bulk(self, limit: int | None = None) -> tuple[float, list[Answer]]:
        """One query: the pairs uploaded, joined to exposures and to a find-first search of the
        CALIBRATION collection, whose validity ranges daf_butler joins to each exposure's
        timespan (the closest equivalent of with_exposures + find_calibrations_bulk).
        """
        s = self.s
        universe = self.butler.dimensions
        group = universe.conform(["exposure", "detector"])
        order = list(group.required)
        pairs = s.pairs[:limit]
        coords = [  # its native input, built untimed like obsbus's data ID dicts
            DataCoordinate.from_required_values(
                group,
                tuple({"instrument": s.instrument, "exposure": x, "detector": d}[k] for k in order),
            )
            for x, d in pairs
        ]
        t = time.perf_counter()
        by_pair: dict[tuple[int, int], DatasetRef] = {}
        with self.butler.query() as query:
            query = query.join_data_coordinates(coords).join_dataset_search(s.bias_type, [s.chain])
            result = query.general(group, dataset_fields={s.bias_type: ...}, find_first=True)
            for row in result.iter_tuples(self.bias):
                by_pair[(row.data_id["exposure"], row.data_id["detector"])] = row.refs[0]
        found = [by_pair.get(p) for p in pairs]
        elapsed = time.perf_counter() - t
        return elapsed, [self._answer(r) for r in found]

    def close(self) -> None:
        if self.butler is not None:
            self.butler.close()
            self.butler = None
        self._drop_schema()

    def _drop_schema(self) -> None:
        if not (self.db and self.namespace):
            return
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.db)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.namespace}" CASCADE')
        engine.dispose()
