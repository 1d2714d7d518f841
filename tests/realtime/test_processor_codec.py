"""The processor's own message decoding and RESP encoding agree with the reference ones."""

from __future__ import annotations

import asyncio
import time
import uuid

import hiredis
import orjson
import pytest
import redis
from aiokafka.structs import ConsumerRecord

from reco.events import MAX_TIMESTAMP_MS, Event
from reco.stack import servers as stack_servers
from reco.stack.health import free_port
from streaming.messages import StreamEvent, decode, decode_for_features
from streaming.redis_pipe import Packed, RedisPipe
from tests.servers import ServerProcess, remove, scratch_dir

EVENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BASE = {"event_id": EVENT_ID, "user_id": "u1", "item_id": "i-9", "event_type": "cart",
        "timestamp": 1_700_000_000_123}


LOG_MS = 1_700_000_000_999  # the record's Kafka timestamp, apart from the event's own


def record(value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord("events", 2, 7, LOG_MS, 0, b"u1", value, None, 0, 0, [])


def message(**changes: object) -> bytes:
    body = {**BASE, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def with_timestamp(raw: bytes) -> bytes:
    """A message whose timestamp is raw JSON text (orjson cannot write 1e400 or NaN)."""
    return message(timestamp=0).replace(b'"timestamp":0', b'"timestamp":' + raw)


@pytest.mark.parametrize("value", [
    message(),
    message(session_id="s-1", context={"device": "ios", "n": 3, "ok": True, "x": None}),
    message(context=None),
    message(event_id=EVENT_ID.upper()),  # not canonical: the model's path
    message(event_id=EVENT_ID.replace("-", "")),
    message(timestamp="2026-01-02T03:04:05.678Z"),
    message(timestamp=1.7e12),
    message(context={"nested": {"a": [1, 2]}}),
    message(context={f"k{i}": i for i in range(32)}),
    message(timestamp=MAX_TIMESTAMP_MS),
    message(timestamp="2026-01-02t03:04:05+01:00"),
    # Over the API's context limit: accepted before it existed, so still valid on replay.
    message(context={"pad": "x" * 5000}),
])
def test_valid_messages_decode_like_the_event_model(value: bytes) -> None:
    expected = decode(record(value))
    assert not isinstance(expected, str)
    assert decode_for_features(record(value)) == StreamEvent(
        str(expected.event_id), expected.user_id, expected.item_id, expected.event_type,
        expected.timestamp, partition=2, offset=7, log_ms=LOG_MS)


@pytest.mark.parametrize("value", [
    None,
    b"not json",
    b'{"user_id": "\xff\xfe", "item_id": "A", "event_type": "view"}',
    b"\x01" * 1000,
    message(timestamp=-1),
    message(timestamp=True),
    message(user_id="has space"),
    message(item_id="x" * 129),
    message(item_id=""),
    message(user_id="caf\u00e9"),
    message(session_id="a\u0000b"),
    message(event_type="like"),
    message(event_id="not-a-uuid"),
    message(surprise=1),
    message(context={f"k{i}": i for i in range(33)}),
    message(context=[1]),
])
def test_invalid_messages_get_the_event_models_reason(value: bytes | None) -> None:
    reason = decode(record(value))
    assert isinstance(reason, str)
    assert decode_for_features(record(value)) == reason


FORMS = ("must be an RFC 3339 date-time with an offset (2026-01-02T03:04:05Z) "
         "or epoch milliseconds")
NOT_FINITE = "must be a finite number of epoch milliseconds"
AFTER_9999 = "must be at most 253402300799999 (9999-12-31T23:59:59.999Z)"


@pytest.mark.parametrize(("value", "reason"), [
    # int(inf) raised OverflowError: the processor crashed, the archiver retried forever
    (with_timestamp(b"1e400"), NOT_FINITE),
    (with_timestamp(b"-1e400"), NOT_FINITE),
    (with_timestamp(b"Infinity"), NOT_FINITE),
    (with_timestamp(b"NaN"), NOT_FINITE),  # was Python's "cannot convert float NaN to integer"
    # past year 9999: the archiver could not make a datetime of it, and retried forever
    (message(timestamp=300_000_000_000_000_000), AFTER_9999),
    (message(timestamp=MAX_TIMESTAMP_MS + 1), AFTER_9999),
    (message(timestamp="9999-12-31T23:59:59-01:00"), AFTER_9999),
    # not a full RFC 3339 date-time with an offset (fromisoformat took them, as UTC)
    (message(timestamp="2026-01-02"), FORMS),
    (message(timestamp="20260102T030405Z"), FORMS),
    (message(timestamp="2026-01-02T03:04:05"), FORMS),
    (message(timestamp="2026-01-02 03:04:05Z"), FORMS),
    (message(timestamp="2026-01-02T03:04Z"), FORMS),
    (message(timestamp="2026-13-02T03:04:05Z"), FORMS),
])
def test_unusable_timestamps_are_invalid_with_a_clear_reason(value: bytes, reason: str) -> None:
    assert decode(record(value)) == f"invalid event: timestamp: {reason}"
    assert decode_for_features(record(value)) == f"invalid event: timestamp: {reason}"


def test_any_decoding_failure_is_a_dlq_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only a ValidationError: anything the model raises on a message must dead-letter it
    (an OverflowError once crash-looped the processor and stalled the archiver)."""

    def broken(raw: bytes, *origin: object) -> None:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(Event, "from_json_bytes", broken)
    value = message(event_id="NOT-CANONICAL")  # off the fast path, through the model
    expected = "undecodable event: OverflowError('cannot convert float infinity to integer')"
    assert decode(record(value)) == expected
    assert decode_for_features(record(value)) == expected


def test_a_message_without_id_or_time_gets_the_same_ones_at_every_read() -> None:
    """From its place in the log and its Kafka time: a random id and `now` made the archiver
    store every redelivery again, and the processor mark another id than the archiver kept."""
    for value in (message(event_id=..., timestamp=...), message(event_id=..., timestamp=None)):
        first, again = decode(record(value)), decode(record(value))
        features = decode_for_features(record(value))
        assert isinstance(first, Event) and isinstance(features, StreamEvent)
        assert first == again
        assert str(first.event_id) == features.event_id == str(
            uuid.UUID(features.event_id))
        assert first.timestamp == features.timestamp == LOG_MS
    elsewhere = ConsumerRecord("events", 2, 8, LOG_MS, 0, b"u1", message(event_id=...), None,
                               0, 0, [])
    assert decode(elsewhere).event_id != first.event_id
    # The same place in a topic made again (offsets from 0): another time, another id.
    again_later = ConsumerRecord("events", 2, 7, LOG_MS + 1, 0, b"u1", message(event_id=...),
                                 None, 0, 0, [])
    assert decode(again_later).event_id != first.event_id


def packed_by_hiredis(*commands: tuple) -> bytes:
    return b"".join(hiredis.pack_command(c) for c in commands)


@pytest.mark.parametrize("member", ["i1", "K\u00fcche-\u20ac"])  # ASCII and not
def test_packed_is_what_hiredis_packs(member: str) -> None:
    p = Packed()
    p.add("EXPIREAT", f"item:trending:{member}", 1_700_000_000)
    p.zincrby(f"co_view:{member}", {member: 1.0, "i2": 0.1 + 0.2})
    p.variadic("RPUSH", f"user:recent:{member}", [member, "i2"])
    p.each("SET", [f"event:seen:{member}", "event:seen:b"], "1", "EX", "60")
    assert len(p) == 1 + 2 + 1 + 2
    assert p.payload() == packed_by_hiredis(
        ("EXPIREAT", f"item:trending:{member}", 1_700_000_000),
        ("ZINCRBY", f"co_view:{member}", "1.0", member),
        ("ZINCRBY", f"co_view:{member}", repr(0.1 + 0.2), "i2"),
        ("RPUSH", f"user:recent:{member}", member, "i2"),
        ("SET", f"event:seen:{member}", "1", "EX", "60"),
        ("SET", "event:seen:b", "1", "EX", "60"))


async def test_packed_transaction_reaches_redis(redis_url: str, redis_client: redis.Redis) -> None:
    category = "K\u00fcche"
    p = Packed()
    p.zincrby(f"test:pop:{category}", {"\u00e9clair": 2.5, "i1": 1.0})
    p.zincrby(f"test:pop:{category}", {"\u00e9clair": 0.5})
    p.variadic("HSET", "test:times", ["i1", "1.5", "\u00e9", "2.0"])
    p.each("EXPIRE", ["test:times"], "100")
    pipe = RedisPipe(redis_url)
    try:
        assert await pipe.execute(p, transaction=True) == [b"2.5", b"1", b"3", 2, 1]
    finally:
        await pipe.close()
    assert redis_client.zrange(f"test:pop:{category}", 0, -1, withscores=True) == [
        ("i1", 1.0), ("\u00e9clair", 3.0)]
    assert redis_client.hgetall("test:times") == {"i1": "1.5", "\u00e9": "2.0"}
    assert 0 < redis_client.ttl("test:times") <= 100


async def test_a_redis_that_stops_answering_fails_the_round_trip_in_time(
        redis_url: str, redis_client: redis.Redis) -> None:
    """A half-open connection must not hold a batch until the kernel gives up on it."""
    pipe = RedisPipe(redis_url, timeout_s=0.3)
    try:
        redis_client.set("test:paused", "1")
        assert await pipe.execute([("PING",)]) == [b"PONG"]
        redis_client.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # answers nobody
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pipe.execute([("GET", "test:paused")])
        assert time.monotonic() - started < 1.5
        redis_client.execute_command("CLIENT", "UNPAUSE")
        assert await pipe.execute([("GET", "test:paused")]) == [b"1"]  # a new connection
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
        await pipe.close()


async def test_a_connection_the_server_closed_while_idle_is_opened_again_first(
        redis_url: str, redis_client: redis.Redis) -> None:
    """After a Redis restart the processor's idle pipe failed its next batch on the closed
    connection, costing a retry and a backoff."""
    pipe = RedisPipe(redis_url)
    try:
        assert await pipe.execute([("CLIENT", "SETNAME", "idle-pipe")]) == [b"OK"]
        redis_client.execute_command("CLIENT", "KILL", "SKIPME", "yes")  # every other client
        await asyncio.sleep(0.2)  # the FIN reaches the event loop
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.close()


async def test_a_connection_lost_while_watching_is_an_error_not_replaced(
        redis_url: str, redis_client: redis.Redis) -> None:
    """A new connection would not hold the WATCH: its EXEC would apply over the concurrent
    write the WATCH is there to catch (events counted twice after a rebalance)."""
    pipe = RedisPipe(redis_url)
    try:
        async with pipe.watching():
            await pipe.execute([("WATCH", "test:watched")])
            redis_client.execute_command("CLIENT", "KILL", "SKIPME", "yes")
            redis_client.set("test:watched", "theirs")  # another processor's write
            await asyncio.sleep(0.2)
            with pytest.raises(ConnectionError, match="held the WATCH"):
                await pipe.execute([("SET", "test:watched", "mine")], transaction=True)
        assert redis_client.get("test:watched") == "theirs"
        assert await pipe.execute([("PING",)]) == [b"PONG"]  # outside: reconnects as usual
    finally:
        await pipe.close()


async def test_the_pipe_reaches_redis_over_a_unix_socket() -> None:
    """`unix://` URLs, which the API's clients and redis-py take: the pipe connected to
    127.0.0.1:6379 instead."""
    workdir = scratch_dir("redis-unix")
    sock = workdir / "redis.sock"
    command = stack_servers.redis_command(workdir / "data", free_port(), persist=False) + [
        "--unixsocket", str(sock), "--unixsocketperm", "700"]
    server = ServerProcess("redis-unix", command, int(command[command.index("--port") + 1]),
                           workdir).start()
    pipe = RedisPipe(f"unix://{sock}?db=2")
    try:
        assert await pipe.execute([("SET", "unix:k", "v")], transaction=True) == [b"OK"]
        assert redis.Redis(unix_socket_path=str(sock), db=2).get("unix:k") == b"v"
    finally:
        await pipe.close()
        remove(server)
