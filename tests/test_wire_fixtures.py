"""The wire format did not change: messages written by the services at commit efbcc41
(tests/data/wire/) decode into their typed classes and encode again to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services import messages
from services.bus.topics import topic
from services.messages import codec

FIXTURES = Path(__file__).parent / "data" / "wire" / "messages.jsonl"


def _fixtures() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURES.read_text().splitlines()]


def _label(m: dict[str, Any]) -> str:
    message = codec.decode(bytes.fromhex(m["value"]))
    body = message.value.get("body")
    kind = body[0] if body else message.value.get("kind") or message.value.get("status") or ""
    return f"{message.record_name}.v{message.version}:{kind}"


@pytest.mark.parametrize("fixture", _fixtures(), ids=_label)
def test_a_message_of_today_decodes_to_its_class_and_encodes_to_the_same_bytes(
    fixture: dict[str, Any],
) -> None:
    data = bytes.fromhex(fixture["value"])
    record = messages.decode(data)
    assert topic(fixture["topic"]).record == type(record).RECORD  # the topic's record type
    written = codec.decode(data)
    if written.version == codec.default_registry().latest(written.record_name).version:
        assert record.encode() == data
    else:  # an older version reads as the latest, with the new fields' defaults
        assert record.to_value() == written.value
        assert type(record).decode(record.encode()) == record


def test_the_fixtures_cover_every_record_and_command_branch() -> None:
    labels = {_label(m) for m in _fixtures()}
    assert {label.split(".v")[0] for label in labels} == set(messages.RECORDS)
    from services.registry.command_types import COMMAND_TYPES

    branches = {label.split(":")[1] for label in labels if label.startswith("RegistryCommand")}
    assert branches == {t.branch for t in COMMAND_TYPES}
