"""Publish one message and wait for the answer that refers back to it.

The asker joins the answers topic and moves to its end *before* sending, so it reads only
answers that come after its request, however long the topic is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from ..core.errors import NoAnswerError
from ..messages import Record
from .topics import Topic
from .transport import Bus

A = TypeVar("A", bound=Record)


def request(
    bus: Bus,
    topic: Topic,
    key: str,
    message: Record,
    answers: Topic,
    answer_type: type[A],
    is_answer: Callable[[A], bool],
    *,
    timeout_s: float,
    waiting_for: str,
) -> A:
    """Send ``message`` on ``topic`` and return the first message on ``answers`` it accepts.

    ``waiting_for`` names the services that answer, for the one-line timeout error. Once the
    message is sent, no answer in time (or Ctrl-C while waiting) is ``NoAnswerError``: the
    request may still be carried out.
    """
    consumer = bus.consumer(f"obsbus-ask-{uuid.uuid4()}", [answers.name])
    try:
        consumer.poll(1.0, 1)  # join the group, then skip to the end
        for tp in consumer.assignment():
            consumer.seek(tp, bus.end_offsets(tp[0]).get(tp[1], 0))
        bus.send(topic.name, key.encode(), message.encode())
        bus.flush()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for d in consumer.poll(0.5, 100):
                    answer = answer_type.decode(d.value)
                    if is_answer(answer):
                        return answer
        except KeyboardInterrupt:
            raise NoAnswerError(
                f"interrupted while waiting on {answers.name}: the request was sent and may "
                f"still be carried out by the {waiting_for}"
            ) from None
    finally:
        consumer.close()
    raise NoAnswerError(
        f"no answer on {answers.name} within {timeout_s:g} s (the request was sent and may "
        f"still be carried out); is the {waiting_for} running? (`obsbus status REPO`)"
    )
