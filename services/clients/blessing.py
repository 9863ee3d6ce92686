"""Asking the calibration service to bless, from Python or the CLI, and waiting for its answer.

    from services.clients.blessing import bless_suite
    from services.calib.suite import load_suite

    outcome = bless_suite(load_suite(Path("suite.yaml")))   # raises BlessingRejectedError
    print(outcome.certified)

A single blessing is a suite of one calibration (``single_suite``). The request is published on
``obsbus.calib.blessing-requests`` and the answer read from ``obsbus.calib.outcomes``; the
broker comes from the environment (``OBSBUS_KAFKA_BOOTSTRAP``...), or pass a ``bus``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..bus.config import KafkaSettings
from ..bus.request import request
from ..bus.topics import BLESSING_REQUESTS, CALIB_OUTCOMES
from ..bus.transport import Bus
from ..calib.suite import NS_CONTEXT, CalibrationSpec, Suite
from ..core.errors import BlessingRejectedError
from ..messages import CalibrationOutcome


def single_suite(
    collection: str,
    dataset_type: str,
    run: str,
    *,
    data_ids: Sequence[Mapping[str, Any]] = (),
    begin_ns: int | None = None,
    end_ns: int | None = None,
    reason: str = "",
    requested_by: str | None = None,
) -> Suite:
    """The suite of one calibration that ``obsbus bless`` sends."""
    return Suite(
        collection=collection,
        reason=reason,
        requested_by=requested_by,
        calibrations=[
            CalibrationSpec.model_validate(
                {
                    "dataset_type": dataset_type,
                    "run": run,
                    "data_ids": [dict(d) for d in data_ids],
                    "begin": begin_ns,
                    "end": end_ns,
                },
                context=NS_CONTEXT,
            )
        ],
    )


def request_blessing(
    bus: Bus, suite: Suite, *, timeout_s: float = 60.0, requested_by: str | None = None
) -> CalibrationOutcome:
    """Publish the suite as one BlessingRequest and wait for its CalibrationOutcome."""
    request_id = str(uuid.uuid4())
    return request(
        bus,
        BLESSING_REQUESTS,
        suite.collection,
        suite.request(request_id, requested_by),
        CALIB_OUTCOMES,
        CalibrationOutcome,
        lambda outcome: outcome.request_id == request_id,
        timeout_s=timeout_s,
        waiting_for="calib service (and the registry service)",
    )


def bless_suite(
    suite: Suite,
    *,
    bus: Bus | None = None,
    timeout_s: float = 60.0,
    requested_by: str | None = None,
) -> CalibrationOutcome:
    """Bless a suite through the calibration service; raises BlessingRejectedError if refused
    (nothing of the suite applied), BusError if no answer comes in time."""
    own = bus is None
    active = KafkaSettings().bus("obsbus-bless") if bus is None else bus
    try:
        outcome = request_blessing(active, suite, timeout_s=timeout_s, requested_by=requested_by)
    finally:
        if own:
            active.close()
    return raise_if_rejected(outcome)


def raise_if_rejected(outcome: CalibrationOutcome) -> CalibrationOutcome:
    """The outcome if blessed; BlessingRejectedError with its reason if not."""
    if outcome.status != "blessed":
        raise BlessingRejectedError(f"blessing rejected [{outcome.reason}]: {outcome.message}")
    return outcome
