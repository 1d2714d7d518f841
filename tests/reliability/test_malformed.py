"""Malformed messages on `events` land in `events.dlq` with their reason, and neither consumer
stalls behind them. tests/realtime covers "not JSON" and a wrong event_type; this adds the
other shapes, oversized ones, and values the archiver once could not store."""

from __future__ import annotations

import json
import time
import uuid

import orjson
import psycopg
import pytest
import redis

from reco import keys
from reco.events import MAX_TIMESTAMP_MS
from reco.settings import Settings
from streaming.messages import DLQ_KEY_MAX_BYTES, DLQ_RAW_MAX_CHARS, DLQ_REASON_MAX_CHARS
from tests.realtime.conftest import Consumers, read_topic, wait_for
from tests.realtime.test_pipeline import _committed, archived
from tests.reliability.conftest import produce_fast, seen_count

pytestmark = pytest.mark.integration


def ev(user: str, item: str, **extra) -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": item,
            "event_type": "view", "timestamp": 1_790_000_000_000, **extra}


BAD = {
    "tombstone": (None, "empty message value"),
    "array": (b"[1, 2]", "invalid event: body: Input should be an object"),
    "missing": (orjson.dumps({"user_id": "u1"}),
                "invalid event: item_id: Field required; event_type: Field required"),
    "unknown field": (orjson.dumps({**ev("u1", "A"), "price": 3}),
                      "invalid event: price: Extra inputs are not permitted"),
    "bad utf-8": (b'{"user_id": "\xff\xfe", "item_id": "A", "event_type": "view"}',
                  "invalid event: body: Invalid JSON: invalid unicode code point at line 1 "
                  "column 14"),
    "user_id too long": (orjson.dumps(ev("u" * 5000, "A")),
                         "invalid event: user_id: String should have at most 128 characters"),
    "context too big": (orjson.dumps(ev("u1", "A", context={f"k{i}": i for i in range(40)})),
                        "invalid event: context: must have at most 32 keys"),
    # int(inf) raised OverflowError: the processor crash-looped, the archiver retried forever.
    "infinite timestamp": (orjson.dumps(ev("u1", "A", timestamp=0)).replace(
        b'"timestamp":0', b'"timestamp":1e400'),
        "invalid event: timestamp: must be a finite number of epoch milliseconds"),
    # Valid for the processor, but the archiver could not make a datetime of it (retried).
    "after year 9999": (orjson.dumps(ev("u1", "A", timestamp=300_000_000_000_000_000)),
                        "invalid event: timestamp: must be at most 253402300799999 "
                        "(9999-12-31T23:59:59.999Z)"),
    # A 990 KB field name, quoted by the reason, next to 64 KB of the raw message: a 1.05 MB
    # record (the same story).
    "huge field name": (orjson.dumps({**ev("u1", "A"), "f" * 990_000: 1}),
                        ("invalid event: " + "f" * 990_000)[:DLQ_REASON_MAX_CHARS]),
    # 300 KB of control characters: escaped, its DLQ record would be 1.8 MB (over the
    # producer's limit; the processor used to retry that batch forever).
    "oversized garbage": (b"\x01" * 300_000,
                          "invalid event: body: Invalid JSON: expected value at line 1 column 1"),
}


async def test_malformed_messages_are_dead_lettered_with_reasons(
    settings: Settings, redis_client: redis.Redis, pg: psycopg.Connection, kafka_topics: dict,
) -> None:
    before = ev("u1", "A")
    # Valid events the archiver once could not store: a >64-bit integer and NUL in context;
    # the last millisecond of year 9999.
    odd = ev("u2", "B", context={"big": 2**70, "text": "a\x00b", "nan": float("nan")})
    last = ev("u3", "B", timestamp=MAX_TIMESTAMP_MS)
    # From a producer other than the ingest API, dated years ahead: its forward-decayed weight
    # outweighed all of today's popularity, and it stayed first in u4's recent list. Archived,
    # but no feature: a dead letter from the processor.
    ahead = ev("u4", "D", timestamp=int((time.time() + 5 * 365 * 86400) * 1000))
    after = [ev(f"u{n}", "C") for n in range(5)]
    # Every message on one key: one partition, so the good events sit behind the bad ones.
    messages = [(b"k", orjson.dumps(before))] + [(b"k", v) for v, _ in BAD.values()]
    messages += [(b"k", json.dumps(odd).encode()), (b"k", orjson.dumps(last))]
    messages += [(b"k", orjson.dumps(ahead))]
    messages += [(b"k", orjson.dumps(e)) for e in after]
    too_late = {len(BAD) + 2: last, len(BAD) + 3: ahead}  # offset -> event
    await produce_fast(settings, messages)
    consumers = Consumers()
    consumers.start("processor", settings)
    consumers.start("archiver", settings)
    try:
        good = [before, odd, *after]
        await wait_for(lambda: seen_count(redis_client, good) == len(good), "good events")
        await wait_for(lambda: _committed(settings, settings.group_processor, len(messages)),
                       "processor committed past every bad message")
        await wait_for(lambda: _committed(settings, settings.group_archiver, len(messages)),
                       "archiver committed past every bad message")
    finally:
        await consumers.stop_all()

    dead = await read_topic(settings, settings.topic_dlq, len(BAD) + len(too_late))
    assert len(dead) == len(BAD) + len(too_late)
    letters = [orjson.loads(m.value) for m in sorted(dead, key=lambda m: m.offset)]
    assert [d["reason"] for d in letters[len(BAD):]] == [
        f"invalid event: timestamp: {e['timestamp']} is more than 3900 seconds ahead of the "
        "processor's clock" for e in too_late.values()]
    assert [d["offset"] for d in letters[len(BAD):]] == list(too_late)
    assert seen_count(redis_client, list(too_late.values())) == 0
    assert redis_client.zscore(keys.ITEM_POPULARITY, "D") is None
    letters = letters[:len(BAD)]
    assert [d["reason"] for d in letters] == [reason for _, reason in BAD.values()]
    assert [d["offset"] for d in letters] == list(range(1, len(BAD) + 1))
    assert all(d["topic"] == settings.topic_events for d in letters)
    assert letters[0]["raw"] is None
    assert letters[1]["raw"] == "[1, 2]" and "raw_truncated" not in letters[1]
    garbage = letters[-1]
    assert garbage["raw"] == "\x01" * DLQ_RAW_MAX_CHARS
    assert garbage["raw_truncated"] is True and garbage["raw_bytes"] == 300_000
    assert letters[-2]["reason_truncated"] is True and "reason_truncated" not in garbage

    rows = archived(settings)
    assert sorted(r[0] for r in rows) == sorted(e["event_id"]
                                                for e in [*good, *too_late.values()])
    stored = pg.execute("SELECT context FROM events WHERE event_id = %s",
                        (odd["event_id"],)).fetchone()[0]
    assert stored == {"big": 2**70, "text": "ab", "nan": None}


async def test_a_huge_key_is_cut_in_its_dead_letter(
    settings: Settings, redis_client: redis.Redis, kafka_topics: dict,
) -> None:
    """From a producer other than the ingest API: a 700 KB key beside 300 KB of garbage made a
    DLQ record over the producer's 1 MiB limit, and the processor retried that batch forever."""
    key = b"k" * 700_000
    after = ev("u1", "A")  # on the same key: the same partition, behind the bad message
    await produce_fast(settings, [(key, b"\x01" * 300_000), (key, orjson.dumps(after))])
    consumers = Consumers()
    consumers.start("processor", settings)
    try:
        await wait_for(lambda: seen_count(redis_client, [after]) == 1, "the event after it")
    finally:
        await consumers.stop_all()
    [dead] = await read_topic(settings, settings.topic_dlq, 1)
    assert dead.key == key[:DLQ_KEY_MAX_BYTES]
    letter = orjson.loads(dead.value)
    assert letter["key_truncated"] is True and letter["key_bytes"] == 700_000
    assert letter["raw_truncated"] is True and letter["raw_bytes"] == 300_000
