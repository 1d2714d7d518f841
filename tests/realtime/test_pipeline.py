"""End to end: ingest API -> Kafka -> processor (Redis) and archiver (PostgreSQL), real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from reco import keys
from reco.events import Event
from reco.features import trending_bucket_starts
from reco.settings import Settings
from reco.stack.health import free_port
from streaming.metrics import EVENTS_PROCESSED, PROCESSING_ERRORS
from tests.realtime.conftest import Consumers, end_offsets, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

DAY = 86_400.0
T = int(time.time()) - 600  # ten minutes ago: inside the trending hour and the future-skew rule


@pytest.fixture(autouse=True)
def _ten_minutes_ago() -> None:
    """T again at each test: set once at collection, it left the trending hour when the suite
    reached this file ~50 minutes later (a slow CI run)."""
    global T
    T = int(time.time()) - 600


def ev(user: str, item: str, t_s: float, event_type: str = "view") -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": item,
            "event_type": event_type, "timestamp": int(t_s * 1000)}


def decayed(settings: Settings, weight: float, t_s: float, half_life_h: float | None = None
            ) -> float:
    half_life_s = (half_life_h or settings.popularity_half_life_h) * 3600
    return weight * 2 ** ((t_s - settings.popularity_landmark_s) / half_life_s)


def coview_of(settings: Settings, r: redis.Redis, item: str) -> list[tuple[str, float]]:
    """The co-view set, each affinity expressed in events at time T (forward decay)."""
    unit = decayed(settings, 1.0, T, settings.coview_half_life_h)
    return [(other, round(score / unit, 4))
            for other, score in r.zrange(keys.co_view(item), 0, -1, withscores=True)]


def archived(settings: Settings) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT event_id::text, user_id, item_id, event_type, "
            "(extract(epoch FROM event_time) * 1000)::bigint FROM events ORDER BY 1").fetchall()


def rows_of(events: list[dict]) -> list[tuple]:
    return sorted((e["event_id"], e["user_id"], e["item_id"], e["event_type"], e["timestamp"])
                  for e in events)


def seen_count(r: redis.Redis, events: list[dict]) -> int:
    return sum(r.exists(keys.event_seen(e["event_id"])) for e in events)


async def test_end_to_end_features_and_archive(
    ingest: httpx.AsyncClient, consumers: Consumers, settings: Settings, pg: psycopg.Connection,
    redis_client: redis.Redis, kafka_topics: dict,
) -> None:
    assert (await ingest.put("/items/A", json={"category": "shoes"})).status_code == 200
    events = [
        ev("u1", "A", T), ev("u1", "B", T + 10, "click"), ev("u1", "A", T + 20),
        ev("u1", "C", T + 30, "cart"), ev("u2", "A", T + 5), ev("u2", "B", T + 15, "purchase"),
        ev("u3", "D", T - 3600), ev("u3", "A", T),  # D is outside the 30 min co-view window
        ev("u4", "E", T - DAY), ev("u5", "F", T),  # same weight, one half-life apart
    ]
    events[-1]["context"] = {"page": "p\x00d"}  # jsonb cannot hold NUL: archived without it
    single = await ingest.post("/events", json=events[0])
    batch = await ingest.post("/events/batch", json={"events": events[1:]})
    assert single.status_code == batch.status_code == 202
    consumers.start("processor", settings)
    consumers.start("archiver", settings)
    await wait_for(lambda: seen_count(redis_client, events) == len(events), "processor")
    await wait_for(lambda: len(archived(settings)) == len(events), "archiver")

    r = redis_client
    assert r.lrange(keys.user_recent("u1"), 0, -1) == ["C", "A", "B"]
    assert r.hgetall(keys.user_recent_times("u1")) == {
        "C": repr(T + 30.0), "A": repr(T + 20.0), "B": repr(T + 10.0)}
    assert r.lrange(keys.user_recent("u3"), 0, -1) == ["A", "D"]
    assert 0 < r.ttl(keys.user_recent("u1")) <= 24 * 3600
    ms = lambda t: float(int(t * 1000))  # noqa: E731  # seen: item -> last touch, epoch ms
    assert r.zrange(keys.user_seen("u1"), 0, -1, withscores=True) == [
        ("B", ms(T + 10)), ("A", ms(T + 20)), ("C", ms(T + 30))]
    assert r.zrange(keys.user_seen("u3"), 0, -1) == ["D", "A"]
    assert 29 * DAY < r.ttl(keys.user_seen("u1")) <= 30 * DAY
    # u1: B after A (A<->B), A after B (A<->B), C after [A, B]; u2: B after A (A<->B); each
    # pair's affinity decayed from its event's time (seconds after T: a hair above 1 each).
    assert coview_of(settings, r, "A") == [("C", 1.0), ("B", 3.0)]
    assert coview_of(settings, r, "B") == [("C", 1.0), ("A", 3.0)]
    assert coview_of(settings, r, "C") == [("A", 1.0), ("B", 1.0)]
    assert not r.exists(keys.co_view("D")) and not r.exists(keys.co_view("E"))
    assert 6 * DAY < r.ttl(keys.co_view("A")) <= 7 * DAY

    pop = dict(r.zrange(keys.ITEM_POPULARITY, 0, -1, withscores=True))
    expected = {
        "A": decayed(settings, 1, T) * 2 + decayed(settings, 1, T + 20)
        + decayed(settings, 1, T + 5),
        "B": decayed(settings, 3, T + 10) + decayed(settings, 10, T + 15),
        "C": decayed(settings, 5, T + 30),
        "D": decayed(settings, 1, T - 3600),
        "E": decayed(settings, 1, T - DAY), "F": decayed(settings, 1, T),
    }
    assert pop == pytest.approx(expected, rel=1e-12)
    assert pop["F"] / pop["E"] == pytest.approx(2.0, rel=1e-12)  # 24h half-life
    assert pop["C"] / pop["F"] == pytest.approx(5 * 2 ** (30 / DAY), rel=1e-12)
    assert r.zrange(keys.category_popularity("shoes"), 0, -1, withscores=True) == [
        ("A", pytest.approx(expected["A"], rel=1e-12))]

    trending: dict[str, float] = {}
    for start in trending_bucket_starts(time.time(), 3600, 60):
        for item, score in r.zrange(keys.trending_bucket(start), 0, -1, withscores=True):
            trending[item] = trending.get(item, 0.0) + score
    assert trending == {"A": 4.0, "B": 13.0, "C": 5.0, "F": 1.0}  # D and E are over an hour old

    assert archived(settings) == rows_of(events)
    assert pg.execute("SELECT context FROM events WHERE context IS NOT NULL").fetchall() == [
        ({"page": "pd"},)]
    # Each user with the time of their earliest event.
    first_seen = {user: min(e["timestamp"] for e in events if e["user_id"] == user)
                  for user in {e["user_id"] for e in events}}
    assert {user: round(seen.timestamp() * 1000) for user, seen in pg.execute(
        "SELECT user_id, first_seen FROM users").fetchall()} == first_seen


async def test_redelivery_is_not_counted_twice(
    consumers: Consumers, settings: Settings, pg: psycopg.Connection,
    redis_client: redis.Redis, kafka_topics: dict,
) -> None:
    first, second = ev("u1", "A", T), ev("u1", "B", T + 1)
    raw = Event.model_validate(first).to_json_bytes()
    await produce(settings, [(b"u1", raw), (b"u1", raw),
                             (b"u1", Event.model_validate(second).to_json_bytes())])
    consumers.start("processor", settings)
    consumers.start("archiver", settings)
    await wait_for(lambda: seen_count(redis_client, [first, second]) == 2, "processor")
    await wait_for(lambda: len(archived(settings)) == 2, "archiver")
    await consumers.stop_all()

    def features() -> tuple:
        r = redis_client
        return (r.zrange(keys.ITEM_POPULARITY, 0, -1, withscores=True),
                coview_of(settings, r, "A"), r.lrange(keys.user_recent("u1"), 0, -1))

    once = features()
    assert once[0] == [("A", pytest.approx(decayed(settings, 1, T), rel=1e-12)),
                       ("B", pytest.approx(decayed(settings, 1, T + 1), rel=1e-12))]
    assert once[1] == [("B", 1.0)]

    # Everything redelivered again, as after a crash that lost the offset commits, and after
    # the duplicate markers' window: each partition's applied position still recognises it.
    redis_client.delete(*redis_client.keys(keys.event_seen("*")))
    replay = settings.model_copy(update={"group_processor": settings.group_processor + "-again",
                                         "group_archiver": settings.group_archiver + "-again"})
    before = EVENTS_PROCESSED.labels("view")._value.get()
    consumers.start("processor", replay)
    consumers.start("archiver", replay)
    await wait_for(lambda: _committed(replay, replay.group_processor, 3), "replayed processor")
    await wait_for(lambda: _committed(replay, replay.group_archiver, 3), "replayed archiver")
    assert features() == once
    assert EVENTS_PROCESSED.labels("view")._value.get() == before
    assert archived(settings) == rows_of([first, second])


async def test_batches_in_a_row_are_written_without_conflicts(
    consumers: Consumers, settings: Settings, redis_client: redis.Redis, kafka_topics: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The overlapped loop plans a batch while the one before is written, taking that batch's
    partition positions from its plan: read from Redis they would still be the older ones, and
    every write would conflict and be redone plainly."""
    events = [ev(f"u{n % 3}", f"i{n}", T + n) for n in range(60)]
    await produce(settings, [(e["user_id"].encode(), Event.model_validate(e).to_json_bytes())
                             for e in events])
    small = settings.model_copy(update={"consumer_batch_max": 5})
    with caplog.at_level("INFO", logger="streaming.overlap"):
        consumers.start("processor", small)
        await wait_for(lambda: seen_count(redis_client, events) == len(events), "processor")
        await consumers.stop_all()
    assert [r.getMessage() for r in caplog.records if "plainly" in r.getMessage()] == []
    positions = [redis_client.get(keys.applied_position(settings.topic_events, p))
                 for p in range(3)]
    assert sum(int(p.split(" ")[0]) for p in positions if p) == len(events)


async def test_invalid_messages_go_to_the_dlq_once(
    consumers: Consumers, settings: Settings, pg: psycopg.Connection,
    redis_client: redis.Redis, kafka_topics: dict,
) -> None:
    good = ev("u1", "A", T)
    bad_type = orjson.dumps({**ev("u2", "B", T), "event_type": "like"})
    await produce(settings, [(b"u1", b"not json"), (b"u2", bad_type),
                             (b"u1", Event.model_validate(good).to_json_bytes())])
    errors_before = PROCESSING_ERRORS.labels(settings.group_processor, "invalid_message")
    errors_before = errors_before._value.get()
    consumers.start("processor", settings)
    consumers.start("archiver", settings)

    dead = await read_topic(settings, settings.topic_dlq, 2)
    letters = sorted((orjson.loads(m.value) for m in dead), key=lambda d: d["raw"])
    assert [(d["raw"], d["topic"]) for d in letters] == [
        ("not json", settings.topic_events), (bad_type.decode(), settings.topic_events)]
    assert letters[0]["reason"] == (
        "invalid event: body: Invalid JSON: expected ident at line 1 column 2")
    assert letters[1]["reason"] == (
        "invalid event: event_type: Input should be 'view', 'click', 'cart' or 'purchase'")
    assert {(d["partition"], d["offset"]) for d in letters} == {
        (m.partition, m.offset) for m in await read_topic(settings, settings.topic_events, 3)
        if m.value != Event.model_validate(good).to_json_bytes()}

    await wait_for(lambda: seen_count(redis_client, [good]) == 1, "processor")
    await wait_for(lambda: _committed(settings, settings.group_archiver, 3), "archiver")
    assert archived(settings) == rows_of([good])
    assert PROCESSING_ERRORS.labels(settings.group_processor, "invalid_message")._value.get() \
        == errors_before + 2
    await consumers.stop_all()
    assert await end_offsets(settings, settings.topic_dlq) == 2  # the archiver sent none


async def test_postgres_restart_during_archiving(
    consumers: Consumers, settings: Settings, pg: psycopg.Connection, kafka_topics: dict,
    postgres_server,
) -> None:
    first = [ev(f"u{n % 7}", f"i{n}", T + n) for n in range(40)]
    second = [ev(f"u{n % 7}", f"j{n}", T + n) for n in range(40)]
    consumers.start("archiver", settings)
    await produce(settings, [(e["user_id"].encode(), orjson.dumps(e)) for e in first])
    await wait_for(lambda: len(archived(settings)) == 40, "first half archived")

    postgres_server.stop(signal.SIGINT)  # fast shutdown: ends open sessions
    try:
        failures = PROCESSING_ERRORS.labels(settings.group_archiver, "ConnectionRefusedError")
        before = failures._value.get()
        await produce(settings, [(e["user_id"].encode(), orjson.dumps(e)) for e in second])
        await wait_for(lambda: failures._value.get() >= before + 2, "archiver retrying")
    finally:
        postgres_server.start()
    await wait_for(lambda: _count_or_none(settings) == 80, "second half archived")
    assert archived(settings) == rows_of(first + second)


def _count_or_none(settings: Settings) -> int | None:
    try:
        return len(archived(settings))
    except psycopg.OperationalError:
        return None  # still starting


async def test_processor_process_sigterm_drains_and_commits(
    settings: Settings, redis_client: redis.Redis, kafka_topics: dict, tmp_path
) -> None:
    events = [ev(f"u{n % 5}", f"i{n % 9}", T + n) for n in range(30)]
    await produce(settings, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    port = free_port()
    env = {**os.environ, "RECO_REDIS_URL": settings.redis_url,
           "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "RECO_TOPIC_EVENTS": settings.topic_events, "RECO_TOPIC_DLQ": settings.topic_dlq,
           "RECO_GROUP_PROCESSOR": settings.group_processor,
           "RECO_PROCESSOR_METRICS_PORT": str(port), "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen([sys.executable, "-m", "reco.cli", "run", "processor"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: seen_count(redis_client, events) == 30, "processor process")

        def lag_zero() -> str | None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.HTTPError:
                return None
            lines = [x for x in text.splitlines() if x.startswith("kafka_consumer_lag{")]
            return text if lines and all(x.endswith(" 0.0") for x in lines) else None

        metrics = await wait_for(lag_zero, "lag metric at 0")
        assert sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                   if x.startswith("events_processed_total{")) == 30
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await _committed(settings, settings.group_processor, 30)


async def _committed(settings: Settings, group: str, expected: int) -> bool:
    """Whether `group` committed offsets covering `expected` messages of the events topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(3):
            total += await consumer.committed(TopicPartition(settings.topic_events, p)) or 0
        return total == expected
    finally:
        await consumer.stop()
