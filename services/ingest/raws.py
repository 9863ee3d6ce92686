"""Raw ingest: header → data ID → formatter → datastore + registry, one outcome per file.

Two phases, like obs_base: ``prepare`` reads and translates a file and builds everything the
registry needs without touching the repository; ``RawIngester.write`` then lands one file's
records, datasets and file in a single transaction. A bad file never stops the others and
never leaves half a record behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..butler import Butler
from ..core.errors import (
    DatastoreFullError,
    ObsbusError,
    UnknownDetectorError,
    UnknownFilterError,
    UnknownInstrumentError,
)
from ..core.timespan import now_ns
from ..datastore.stored import StoredFile
from ..datastore.transaction import DatastoreTransaction
from ..fits.hdus import read_hdus
from ..instruments import Instrument, available, load_instrument
from ..instruments.base import RAW
from ..messages import DetectorSwap, IngestOutcome
from ..registry.commands import IngestApplier, IngestRaw, Installation
from ..registry.datasets import DatasetRef, IdGenerationMode
from ..registry.registry import Registry
from .headers import HeaderTranslator
from .observation import Record

log = structlog.get_logger(__name__)

RAW_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fit")
INGEST_AGAIN = (
    "then ingest it again: it was left where it was, and the files already ingested are "
    "recognised (already-present)"
)


@dataclass(frozen=True)
class RawDataset:
    """One detector's dataset in a raw file."""

    detector: int
    locator: str | None
    serial: str | None
    formatter: str


@dataclass(frozen=True)
class PreparedFile:
    """Everything known about one raw file before the database is touched."""

    path: Path
    instrument: type[Instrument]
    exposure: Record
    day_obs: Record | None
    group: Record | None
    visit: tuple[Record, Record] | None
    datasets: tuple[RawDataset, ...]


def find_raw_files(paths: Iterable[Path]) -> list[Path]:
    """Files given, and raw-looking files under directories given (sorted, recursive)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.name.lower().endswith(RAW_SUFFIXES)
                )
            )
        else:
            out.append(path)
    return out


def prepare(path: Path, translator: HeaderTranslator | None = None) -> PreparedFile:
    """Read and translate one file (no repository access); raises ObsbusError on bad input.

    Pass the same ``translator`` for a session's files: it translates each exposure once.
    """
    translator = translator or HeaderTranslator()
    hdus = read_hdus(path)
    header_translator = translator.choose(path, hdus[0])
    instrument = _instrument_for(path, str(header_translator.name))
    translated = translator.translate(path, hdus, instrument, header_translator)
    records = translated[0].exposure.records
    exposure = records.exposure
    if exposure["physical_filter"] not in instrument.physical_filters():
        raise UnknownFilterError(
            f"{path}: filter {exposure['physical_filter']!r} is not one of {instrument.name}'s; "
            "add it to the instrument definition and register it again"
        )
    datasets = []
    for item in translated:
        detector = item.detector_num
        if not instrument.has_detector(detector):
            raise UnknownDetectorError(f"{path}: {instrument.name} has no detector {detector}")
        data_id = {"instrument": instrument.name, "exposure": exposure["id"], "detector": detector}
        formatter = instrument.raw_formatter(data_id)
        datasets.append(
            RawDataset(
                detector=detector,
                locator=item.locator,
                serial=item.detector_serial,
                formatter=f"{formatter.__module__}.{formatter.__qualname__}",
            )
        )
    return PreparedFile(
        path=path,
        instrument=instrument,
        exposure=exposure,
        day_obs=records.day_obs,
        group=records.group,
        visit=records.visit,
        datasets=tuple(datasets),
    )


def _instrument_for(path: Path, name: str) -> type[Instrument]:
    if name not in available():
        raise UnknownInstrumentError(
            f"{path}: a {name} raw, but obsbus has no {name} instrument "
            f"(installed: {', '.join(available())})"
        )
    return load_instrument(name)


def raw_refs(registry: Registry, prepared: PreparedFile, run: str) -> list[DatasetRef]:
    """The raw datasets of a file, with their deterministic ids."""
    instrument, exposure = prepared.instrument.name, prepared.exposure["id"]
    return [
        registry.make_ref(
            RAW,
            {"instrument": instrument, "exposure": exposure, "detector": d.detector},
            run,
            IdGenerationMode.DATAID_TYPE_RUN,
        )
        for d in prepared.datasets
    ]


def to_command(
    prepared: PreparedFile, run: str, refs: list[DatasetRef], stored: list[StoredFile]
) -> IngestRaw:
    """The registry command that records one prepared (and transferred) file."""
    records = [
        ("day_obs", prepared.day_obs),
        ("group", prepared.group),
        ("exposure", prepared.exposure),
    ]
    if prepared.visit is not None:
        records += [("visit", prepared.visit[0]), ("visit_definition", prepared.visit[1])]
    since = prepared.exposure["timespan"].db_begin
    return IngestRaw(
        run=run,
        file=str(prepared.path),
        records=tuple((e, r) for e, r in records if r is not None),
        installations=tuple(
            Installation(prepared.instrument.name, d.detector, d.serial, since)
            for d in prepared.datasets
            if d.serial is not None
        ),
        datasets=tuple(refs),
        stored=tuple(stored),
    )


def _exposure_key(prepared: PreparedFile) -> tuple[str, int]:
    return prepared.instrument.name, prepared.exposure["id"]


class RawIngester:
    """Ingests raw files into a repository; one instance per ingest session or service.

    It writes the registry directly (not through ``butler.writes``): not for use while a
    registry service owns the registry (``obsbus ingest-raws`` refuses then).
    """

    def __init__(self, butler: Butler, *, transfer: str = "copy", run: str | None = None) -> None:
        self.butler = butler
        self.transfer = transfer
        self.run = run
        self._applier = IngestApplier(butler.registry)
        self._translator = HeaderTranslator()

    def ingest(self, paths: Iterable[Path], fail_fast: bool = False) -> Iterator[IngestOutcome]:
        """Ingest each file, yielding outcomes as they are known (in the order given).

        Consecutive files of one exposure (205 for a SimCam exposure) are landed together in
        one transaction; if that fails, they are landed one by one so only the bad file fails.
        """
        batch: list[PreparedFile] = []
        for path in paths:
            try:
                prepared = prepare(path, self._translator)
            except Exception as err:  # one outcome per file, whatever went wrong
                yield from self._flush(batch)
                batch = []
                yield self._failure(path, err)
                if fail_fast:
                    return
                continue
            if batch and _exposure_key(batch[0]) != _exposure_key(prepared):
                outcomes = self._flush(batch)
                yield from outcomes
                batch = []
                if fail_fast and any(o.status == "failed" for o in outcomes):
                    return
            batch.append(prepared)
        yield from self._flush(batch)

    def _flush(self, batch: list[PreparedFile]) -> list[IngestOutcome]:
        if not batch:
            return []
        if len(batch) > 1:
            try:
                return self.write(batch)
            except Exception:
                pass
        outcomes = []
        for prepared in batch:
            try:
                outcomes.extend(self.write([prepared]))
            except Exception as err:
                outcomes.append(self._failure(prepared.path, err))
        return outcomes

    @staticmethod
    def _failure(path: Path, err: Exception) -> IngestOutcome:
        if isinstance(err, DatastoreFullError):
            err = err.then_do(INGEST_AGAIN)
        if isinstance(err, ObsbusError):
            return IngestOutcome(str(path), "failed", err.code, str(err), finished_at_ns=now_ns())
        # A translator or library failure must not stop the rest, but it is a bug to report.
        log.error("unexpected ingest failure", file=str(path), exc_info=err)
        return IngestOutcome(
            str(path),
            "failed",
            "unexpected",
            f"{path}: {type(err).__name__}: {err}",
            finished_at_ns=now_ns(),
        )

    def write(self, batch: list[PreparedFile]) -> list[IngestOutcome]:
        """Land prepared files of one exposure: records, datasets and files, all or nothing."""
        registry = self.butler.registry
        run = self.run or batch[0].instrument.raw_run()
        with self.butler.datastore.transaction(batch_sync=True) as files, registry.transaction():
            self._applier.new_batch()
            commands = []
            for prepared in batch:
                refs = raw_refs(registry, prepared, run)
                stored = transfer_file(files, prepared, refs, self.transfer)
                commands.append(to_command(prepared, run, refs, stored))
            results = self._applier.apply_many(commands)
            files.make_durable()  # the files, then the rows that point at them
        outcomes = []
        for prepared, command, result in zip(batch, commands, results, strict=True):
            outcomes.append(
                IngestOutcome(
                    str(prepared.path),
                    result.status,
                    instrument=prepared.instrument.name,
                    exposure=prepared.exposure["id"],
                    detectors=tuple(d.detector for d in prepared.datasets),
                    dataset_ids=tuple(str(r.id) for r in command.datasets),
                    swaps=tuple(DetectorSwap(**s) for s in result.swaps),
                    message=f"{len(command.datasets)} dataset(s) into {run}"
                    if result.status == "ingested"
                    else "",
                    finished_at_ns=now_ns(),
                )
            )
        return outcomes


def transfer_file(
    files: DatastoreTransaction, prepared: PreparedFile, refs: list[DatasetRef], transfer: str
) -> list[StoredFile]:
    """Bring one raw file into the datastore: one transfer, however many detectors it holds.

    Each dataset's record points into the same file with its own locator.
    """
    first = refs[0]
    path_data_id = (
        first.data_id
        if len(refs) == 1
        else {"instrument": first.data_id["instrument"], "exposure": first.data_id["exposure"]}
    )
    stored = files.ingest(
        prepared.path,
        dataset_id=first.id,
        dataset_type=RAW.name,
        run=first.run,
        data_id=path_data_id,
        storage_class=RAW.storage_class,
        formatter=prepared.datasets[0].formatter,
        transfer=transfer,
    )
    return [
        dataclasses.replace(stored, dataset_id=ref.id, locator=d.locator, formatter=d.formatter)
        for ref, d in zip(refs, prepared.datasets, strict=True)
    ]
