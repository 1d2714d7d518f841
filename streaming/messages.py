"""Decoding of `events` messages and the dead-letter record format."""

from __future__ import annotations

from collections.abc import Sequence

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


def split(
    records: Sequence[ConsumerRecord],
) -> tuple[list[Event], list[tuple[ConsumerRecord, str]]]:
    """The batch's events, and its bad messages with the reason."""
    events: list[Event] = []
    bad: list[tuple[ConsumerRecord, str]] = []
    for record in records:
        decoded = decode(record)
        if isinstance(decoded, str):
            bad.append((record, decoded))
        else:
            events.append(decoded)
    return events, bad


# Characters of the original message kept in a DLQ record. Escaping can make a character six
# bytes (\u0001): uncapped, a 300 KB message became a 1.8 MB record the producer refused, and
# the processor retried that batch forever (issue 7). 64 Ki characters stay under 400 KB.
DLQ_RAW_MAX_CHARS = 65_536


def dlq_value(record: ConsumerRecord, reason: str) -> bytes:
    """DLQ message value: the reason, where the message came from, and its original bytes
    (the first DLQ_RAW_MAX_CHARS characters; `raw_bytes` is the full size)."""
    raw = record.value.decode("utf-8", errors="replace") if record.value is not None else None
    value = {
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "raw": raw if raw is None else raw[:DLQ_RAW_MAX_CHARS],
    }
    if raw is not None and len(raw) > DLQ_RAW_MAX_CHARS:
        value["raw_truncated"] = True
        value["raw_bytes"] = len(record.value)
    return orjson.dumps(value)
