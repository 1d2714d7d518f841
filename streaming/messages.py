"""Decoding of `events` messages and the dead-letter record format."""

from __future__ import annotations

import orjson
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from reco.events import Event, describe_errors


def decode(record: ConsumerRecord) -> Event | str:
    """The event of a message, or why it is not one (the DLQ reason)."""
    if record.value is None:
        return "empty message value"
    try:
        return Event.from_json_bytes(record.value)
    except ValidationError as exc:
        reasons = "; ".join(f"{e['field']}: {e['reason']}" for e in describe_errors(exc))
        return f"invalid event: {reasons}"


def dlq_value(record: ConsumerRecord, reason: str) -> bytes:
    """DLQ message value: the reason, where the message came from, and its original bytes."""
    raw = record.value.decode("utf-8", errors="replace") if record.value is not None else None
    return orjson.dumps({
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "raw": raw,
    })
