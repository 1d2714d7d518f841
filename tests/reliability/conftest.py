"""Helpers of the fault tests: event streams, Redis dumps, a clean reference run, processes."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaProducer

from reco import keys
from reco.settings import Settings
from reco.topics import ensure_topics
from streaming import processor
from tests.realtime.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
# Three hours ago: outside the trending hour at any time during the test, so no feature
# depends on when it is computed; 10 minutes of event time keeps co-view windows busy.
START_S = time.time() - 3 * 3600


def make_events(n: int, users: int = 40, items: int = 60, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    kinds = ["view"] * 6 + ["click"] * 2 + ["cart", "purchase"]
    return [{"event_id": str(uuid.UUID(int=rng.getrandbits(128))),
             "user_id": f"u{rng.randrange(users)}", "item_id": f"i{rng.randrange(items)}",
             "event_type": rng.choice(kinds), "timestamp": int((START_S + i * 0.3) * 1000)}
            for i in range(n)]


def seen_count(r: redis.Redis, events: list[dict]) -> int:
    ids = [keys.event_seen(e["event_id"]) for e in events]
    return sum(r.exists(*ids[i:i + 500]) for i in range(0, len(ids), 500))


def dump(r: redis.Redis) -> dict[str, Any]:
    """Every key's value (not TTLs); sorted sets as {member: score}. Not the processor's applied
    positions: they name the topic, and reference runs read their own. Nor the popularity
    prune's period key and SCAN marker: whether a run got to them depends on its timing."""
    out: dict[str, Any] = {}
    prune = {keys.POPULARITY_PRUNE_LOCK, keys.POPULARITY_CATEGORIES_SCANNED}
    for key in r.scan_iter(count=1000):
        if key.startswith(keys.APPLIED_POSITION_PATTERN.rstrip("*")) or key in prune:
            continue
        kind = r.type(key)
        if kind == "string":
            out[key] = r.get(key)
        elif kind == "list":
            out[key] = r.lrange(key, 0, -1)
        elif kind == "hash":
            out[key] = r.hgetall(key)
        elif kind == "zset":
            out[key] = dict(r.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            out[key] = sorted(r.smembers(key))
        else:
            out[key] = kind
    return out


def assert_same_features(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal key sets and values; sorted-set scores to 1e-9 (float sums in another order)."""
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())), float):
            assert actual[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert actual[key] == value, key


async def reference_features(settings: Settings, redis_url: str, events: list[dict]) -> dict:
    """The features of a run without faults: the same events through a fresh topic and a
    fresh processor into the (flushed) Redis database `redis_url`."""
    import orjson

    suffix = uuid.uuid4().hex[:8]
    clean = settings.model_copy(update={
        "redis_url": redis_url, "topic_events": f"events-ref-{suffix}",
        "topic_dlq": f"events.dlq-ref-{suffix}", "group_processor": f"ref-{suffix}"})
    await ensure_topics(clean.kafka_bootstrap, {clean.topic_events: 3, clean.topic_dlq: 1})
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.flushdb()
    await produce_fast(clean, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run_async(clean, stop))
    try:
        await wait_for(lambda: seen_count(r, events) == len(events), "reference run")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    result = dump(r)
    r.flushdb()
    return result


async def produce_fast(settings: Settings, messages: list[tuple[bytes, bytes]],
                       topic: str | None = None) -> None:
    """Like tests.realtime's `produce`, without a round trip per message."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic or settings.topic_events, value, key=key)
                   for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """RECO_* environment of a subprocess pointing at the test's servers and names."""
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "RECO_REDIS_URL": settings.redis_url, "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "RECO_TOPIC_EVENTS": settings.topic_events, "RECO_TOPIC_DLQ": settings.topic_dlq,
           "RECO_GROUP_PROCESSOR": settings.group_processor,
           "RECO_GROUP_ARCHIVER": settings.group_archiver, "RECO_PG_PORT": str(settings.pg_port),
           "RECO_CONSUMER_BACKOFF_MAX_S": "2"}
    env.update(extra)
    return env


def start_process(name: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    log = open(cwd / f"{name}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "reco.cli", "run", name], env=env, cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT)
