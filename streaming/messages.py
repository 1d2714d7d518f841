"""Decoding of `events` messages and the dead-letter record format."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import orjson
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from reco import erasure
from reco.events import (
    CANONICAL_UUID_RE,
    EVENT_TYPES,
    IDENTIFIER_RE,
    MAX_CONTEXT_KEYS,
    MAX_TIMESTAMP_MS,
    Event,
    describe_errors,
)


def decode(record: ConsumerRecord) -> Event | str:
    """The event of a message, or why it is not one (the DLQ reason)."""
    if record.value is None:
        return "empty message value"
    try:
        logged_ms = record.timestamp if record.timestamp and record.timestamp > 0 else None
        # The time too: offsets start again at 0 in a topic made again, and the archiver
        # would take a new message for the one already stored under the same id.
        return Event.from_json_bytes(
            record.value, f"{record.topic}/{record.partition}/{record.offset}/{logged_ms}",
            logged_ms)
    except ValidationError as exc:
        reasons = "; ".join(f"{e['field']}: {e['reason']}" for e in describe_errors(exc))
        return f"invalid event: {reasons}"
    except Exception as exc:  # noqa: BLE001 - any failure is a DLQ reason, not a stuck batch
        return f"undecodable event: {exc!r}"


class StreamEvent(msgspec.Struct, frozen=True, gc=False):
    """The fields of a valid event that the feature processor uses, and where its record sits
    in the topic (streaming/applied_positions.py)."""

    event_id: str  # canonical UUID text, as str(uuid.UUID) writes it
    user_id: str
    item_id: str
    event_type: str
    timestamp: int  # epoch milliseconds
    partition: int = -1  # -1: not read from Kafka (no position)
    offset: int = -1
    # The record's Kafka timestamp, epoch ms: the broker's clock (LogAppendTime, reco/topics.py)
    log_ms: int = -1

    @property
    def timestamp_s(self) -> float:
        return self.timestamp / 1000.0


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    """The common shape of a message, as the ingest API writes it. Anything else (a missing id
    or timestamp, RFC 3339 text, nested context, ...) is left to the full pydantic model."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: int
    session_id: str | None = None
    context: dict[str, str | int | float | bool | None] | None = None


_wire = msgspec.json.Decoder(_Wire)


def decode_for_features(record: ConsumerRecord) -> StreamEvent | str:
    """`decode` at a fraction of the cost: msgspec reads the common shape and the checks below
    accept only what the Event model accepts, with the same values; everything else (every
    invalid message included) goes through the model, which has the final word and the reason."""
    try:
        w = _wire.decode(record.value)
    except (msgspec.DecodeError, ValueError, TypeError):  # bad UTF-8; no value (None)
        w = None
    if (w is not None and CANONICAL_UUID_RE.fullmatch(w.event_id)
            and IDENTIFIER_RE.fullmatch(w.user_id) and IDENTIFIER_RE.fullmatch(w.item_id)
            and w.event_type in EVENT_TYPES and 0 <= w.timestamp <= MAX_TIMESTAMP_MS
            and (w.session_id is None or IDENTIFIER_RE.fullmatch(w.session_id))
            and (w.context is None or len(w.context) <= MAX_CONTEXT_KEYS)):
        return StreamEvent(w.event_id, w.user_id, w.item_id, w.event_type, w.timestamp,
                           record.partition, record.offset, record.timestamp)
    event = decode(record)
    if isinstance(event, str):
        return event
    return StreamEvent(str(event.event_id), event.user_id, event.item_id, event.event_type,
                       event.timestamp, record.partition, record.offset, record.timestamp)


# The ingest API refuses times more than RECO_MAX_FUTURE_SKEW_S ahead, so only another
# producer's message gets here dated more than that plus this past the processor's clock: one
# dated years ahead outweighed all of today's popularity (forward decay grows with the time)
# and stayed first in its user's recent list. It goes to the DLQ; the archiver still stores it.
# The hour leaves room for clocks that disagree.
CLOCK_DISAGREEMENT_MS = 3_600_000


class StreamErasure(msgspec.Struct, frozen=True, gc=False):
    """A user's erasure (reco/erasure.py) and where its record sits in the topic."""

    erasure_id: str
    user_id: str
    partition: int
    offset: int
    log_ms: int

    def precedes(self, event: StreamEvent) -> bool:
        """Whether it comes after `event` in the topic (one partition holds a user's records;
        one from another partition cannot be placed, and is kept)."""
        return event.partition == self.partition and event.offset < self.offset


def decode_erasure(record: ConsumerRecord) -> StreamErasure | str:
    decoded = erasure.decode(record.value)
    if isinstance(decoded, str):
        return decoded
    return StreamErasure(decoded.erasure_id, decoded.user_id, record.partition, record.offset,
                         record.timestamp)


class FeatureRecords(NamedTuple):
    """A batch as the feature processor reads it, each list in topic order."""

    events: list[StreamEvent]
    bad: list[tuple[ConsumerRecord, str]]
    erasures: list[StreamErasure]


def split_for_features(records: Sequence[ConsumerRecord],
                       max_future_skew_s: float) -> FeatureRecords:
    """The batch's valid events, its bad messages with the reason (dead-lettered), and its
    erasures. Events dated more than `max_future_skew_s` (the ingest API's limit) plus
    `CLOCK_DISAGREEMENT_MS` past the clock are bad too."""
    ahead_ms = max_future_skew_s * 1000 + CLOCK_DISAGREEMENT_MS
    latest = time.time() * 1000 + ahead_ms
    events: list[StreamEvent] = []
    bad: list[tuple[ConsumerRecord, str]] = []
    erasures: list[StreamErasure] = []
    for record in records:
        if record.headers and erasure.is_erasure(record.headers):
            decoded_erasure = decode_erasure(record)
            if isinstance(decoded_erasure, str):
                bad.append((record, decoded_erasure))
            else:
                erasures.append(decoded_erasure)
            continue
        decoded = decode_for_features(record)
        if isinstance(decoded, str):
            bad.append((record, decoded))
        elif decoded.timestamp > latest:
            bad.append((record, f"invalid event: timestamp: {decoded.timestamp} is more than "
                                f"{ahead_ms / 1000:.0f} seconds ahead of the processor's clock"))
        else:
            events.append(decoded)
    return FeatureRecords(events, bad, erasures)


# Characters of the original message kept in a DLQ record. Escaping can make a character six
# bytes (\u0001): uncapped, a 300 KB message became a 1.8 MB record the producer refused, and
# the processor retried that batch forever (issue 7). 64 Ki characters stay under 400 KB.
DLQ_RAW_MAX_CHARS = 65_536
# The reason is bounded too: it quotes field names, which a message can make as long as itself.
DLQ_REASON_MAX_CHARS = 4_096
# And the key (a user id is at most 128 characters; another producer's key can be 700 KB).
DLQ_KEY_MAX_BYTES = 1_024


def dlq_record(record: ConsumerRecord, reason: str) -> tuple[bytes | None, bytes]:
    """DLQ message key and value: the original key's first DLQ_KEY_MAX_BYTES bytes (its full
    size is then `key_bytes` in the value), and `dlq_value`."""
    key = record.key
    if key is None or len(key) <= DLQ_KEY_MAX_BYTES:
        return key, dlq_value(record, reason)
    return key[:DLQ_KEY_MAX_BYTES], dlq_value(record, reason, key_bytes=len(key))


def dlq_value(record: ConsumerRecord, reason: str, key_bytes: int | None = None) -> bytes:
    """DLQ message value: the reason, where the message came from, and its original bytes
    (the first DLQ_RAW_MAX_CHARS characters; `raw_bytes` is the full size). The reason keeps
    its first DLQ_REASON_MAX_CHARS characters."""
    raw = record.value.decode("utf-8", errors="replace") if record.value is not None else None
    value: dict = {
        "reason": reason[:DLQ_REASON_MAX_CHARS],
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "raw": raw if raw is None else raw[:DLQ_RAW_MAX_CHARS],
    }
    if raw is not None and len(raw) > DLQ_RAW_MAX_CHARS:
        value["raw_truncated"] = True
        value["raw_bytes"] = len(record.value)
    if len(reason) > DLQ_REASON_MAX_CHARS:
        value["reason_truncated"] = True
    if key_bytes is not None:
        value["key_truncated"] = True
        value["key_bytes"] = key_bytes
    return orjson.dumps(value)
