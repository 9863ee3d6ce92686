"""The calibration service's handler: blessing requests in, certify commands (or refusals) out.

A request names datasets (a dataset type in a RUN, optionally some data IDs), the target
CALIBRATION collection and the validity range. The service checks it against the registry
(read only): the datasets exist and are calibrations, the target is a CALIBRATION collection
(or new), and nothing already certified there overlaps. A request that passes becomes a
Certify command for the registry service, which answers with the blessed outcome; one that
does not is refused here, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..bus.messages import registry_command
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import CALIB_OUTCOMES, REGISTRY_COMMANDS
from ..core.errors import (
    CalibrationOverlapError,
    CollectionTypeError,
    DatasetNotFoundError,
    NotACalibrationError,
    ObsbusError,
)
from ..core.timespan import Timespan, now_ns
from ..registry.collections import CollectionType
from ..registry.commands import Certify
from ..registry.registry import Registry


class CalibHandler:
    def __init__(self, registry: Registry, name: str = "calib") -> None:
        self.registry = registry
        self.name = name

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        return [self.handle(item.value) for item in batch]

    def handle(self, request: dict[str, Any]) -> Outgoing:
        try:
            command = self.check(request)
        except ObsbusError as err:
            return Outgoing(
                CALIB_OUTCOMES.name,
                request["collection"],
                CALIB_OUTCOMES.record,
                {
                    "request_id": request["request_id"],
                    "collection": request["collection"],
                    "status": "rejected",
                    "reason": err.code,
                    "message": str(err),
                    "certified": 0,
                    "at_ns": now_ns(),
                },
            )
        return Outgoing(
            REGISTRY_COMMANDS.name,
            request["collection"],
            REGISTRY_COMMANDS.record,
            registry_command(
                command,
                f"{self.name} for {request['requested_by']}",
                command_id=request["request_id"],
            ),
        )

    def check(self, request: dict[str, Any]) -> Certify:
        """The Certify command a valid request becomes; raises the reason otherwise."""
        registry = self.registry
        collection, dataset_type = request["collection"], request["dataset_type"]
        dt = registry.get_dataset_type(dataset_type)
        if not dt.is_calibration:
            raise NotACalibrationError(
                f"dataset type {dataset_type!r} is not a calibration type; only calibration "
                "datasets can be blessed"
            )
        existing = {c.name: c for c in registry.query_collections()}.get(collection)
        if existing is not None and existing.type is not CollectionType.CALIBRATION:
            raise CollectionTypeError(
                f"collection {collection!r} is {existing.type.value}, not CALIBRATION"
            )
        if existing is not None:
            existing.check_writable("bless into it")
        registry.get_collection(request["run"])
        found = [ref for ref, _ in registry.query_datasets(dataset_type, [request["run"]])]
        wanted = [registry.universe.data_id(dt.dimensions, d) for d in request["data_ids"]]
        refs = [r for r in found if not wanted or r.data_id in wanted]
        missing = [str(w) for w in wanted if w not in {r.data_id for r in refs}]
        if missing or not refs:
            raise DatasetNotFoundError(
                f"run {request['run']!r} has no {dataset_type} for "
                + (", ".join(missing) if missing else "any data ID")
            )
        timespan = Timespan(request["begin_ns"], request["end_ns"])
        if existing is not None:
            conflicts = [
                f"{ref.data_id} {ts}"
                for ref, ts in registry.query_calibrations(collection, dataset_type)
                if ts.overlaps(timespan)
                and ref.data_id in {r.data_id for r in refs}
                and not (ref.id in {r.id for r in refs} and ts == timespan)
            ]
            if conflicts:
                raise CalibrationOverlapError(collection, dataset_type, conflicts)
        return Certify(collection, tuple(str(r.id) for r in refs), timespan, request["request_id"])
