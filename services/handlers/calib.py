"""The calibration service's handler: blessing requests in, certify commands (or refusals) out.

A request is a suite (a single blessing is a suite of one): calibrations to certify (a dataset
type in a RUN, optionally some data IDs, a validity range each), the target CALIBRATION
collection and the declared changes to ranges already certified there. The service checks it
against the registry (read only, ``calib.suite.check_suite``): the datasets exist and are
calibrations, their data IDs are registered, the target is a CALIBRATION collection (or new),
every adjustment matches a certified range, and after the adjustments nothing overlaps (neither
what is certified nor another item of the suite). A request that passes becomes one
CertifySuite command, which the registry service applies in one transaction and answers with
the blessed outcome; one that does not is refused here, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from pydantic import ValidationError

from ..bus.declaration import Declaration
from ..bus.runner import Incoming, Outgoing
from ..bus.topics import BLESSING_REQUESTS, CALIB_OUTCOMES, REGISTRY_COMMANDS, WRITES_KEY
from ..calib.suite import Suite, check_suite, validation_summary
from ..core.errors import InputError, ObsbusError
from ..core.timespan import now_ns
from ..messages import BlessingRequest, CalibrationOutcome, RegistryCommand
from ..registry.registry import Registry
from ..registry.suites import CertifySuite

log = structlog.get_logger(__name__)

SERVICE = Declaration(
    "calib",
    reads=(BLESSING_REQUESTS,),
    writes=(REGISTRY_COMMANDS, CALIB_OUTCOMES),
    group="obsbus-calib",
    doc="blessing requests in, checked; a CertifySuite command (or a refusal) out",
)


class CalibHandler:
    def __init__(self, registry: Registry, name: str = "calib") -> None:
        self.registry = registry
        self.name = name

    def __call__(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        return [self.handle(_request(item)) for item in batch]

    def handle(self, request: BlessingRequest) -> Outgoing:
        try:
            command = self.check(request)
        except ObsbusError as err:
            log.info("blessing refused", request_id=request.request_id, reason=err.code)
            return Outgoing(
                CALIB_OUTCOMES.name,
                request.collection,
                CalibrationOutcome(
                    request_id=request.request_id,
                    collection=request.collection,
                    status="rejected",
                    reason=err.code,
                    message=str(err),
                    certified=0,
                    at_ns=now_ns(),
                ),
            )
        return Outgoing(
            REGISTRY_COMMANDS.name,
            WRITES_KEY,
            RegistryCommand.new(
                command, f"{self.name} for {request.requested_by}", request.request_id
            ),
        )

    def check(self, request: BlessingRequest) -> CertifySuite:
        """The CertifySuite command a valid request becomes; raises the reason otherwise."""
        try:
            suite = Suite.from_request(request)
        except ValidationError as err:
            raise InputError(f"malformed blessing request: {validation_summary(err)}") from err
        return check_suite(self.registry, suite, request.request_id)


def _request(item: Incoming) -> BlessingRequest:
    assert isinstance(item.message, BlessingRequest)  # the runner checks each topic's record
    return item.message
