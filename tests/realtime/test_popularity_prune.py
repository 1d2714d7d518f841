"""Pruning of faded popularity members (streaming/popularity_prune.py) against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from reco import keys
from reco.features import FeatureParams
from reco.settings import Settings
from streaming import popularity_prune
from streaming.feature_store import FeatureStore
from streaming.messages import StreamEvent
from streaming.popularity_prune import Pruned, faded_bound, prune_periodically, prune_popularity
from streaming.redis_pipe import RedisPipe
from tests.realtime.conftest import Consumers, produce, wait_for

pytestmark = pytest.mark.integration

HALF_LIFE_S = 24 * 3600.0  # tests/realtime/conftest.py pins the half-life at 24 h
LANDMARK = 1_790_000_000.0
NOW = LANDMARK + 10 * HALF_LIFE_S  # one view now is worth 2**10 = 1024 in stored units
BOUND = 0.01 * 1024  # 1% of one view now, in stored units


def pruned_total(kind: str) -> float:
    return REGISTRY.get_sample_value("popularity_pruned_total", {"set": kind}) or 0.0


def members(r: redis.Redis, key: str) -> dict[str, float]:
    return dict(r.zrange(key, 0, -1, withscores=True))


@pytest.fixture
def pinned(settings: Settings) -> Settings:
    """A known landmark, and the API reading only the top member of each set (so that the
    faded members below it are all prunable)."""
    return settings.model_copy(update={
        "popularity_landmark_s": LANDMARK, "popular_snapshot_size": 1,
        "popular_category_snapshot_n": 1})


@pytest.fixture
async def client(pinned: Settings, redis_client: redis.Redis) -> AsyncIterator[RedisPipe]:
    pipe = RedisPipe(pinned.redis_url)
    try:
        yield pipe
    finally:
        await pipe.close()


def test_the_bound_is_a_hundredth_of_the_lightest_event_now() -> None:
    params = FeatureParams(event_weights={"view": 1.0, "click": 3.0}, half_life_s=HALF_LIFE_S,
                           landmark_s=LANDMARK)
    assert faded_bound(params, NOW) == pytest.approx(BOUND, rel=1e-15)
    assert faded_bound(params, LANDMARK - HALF_LIFE_S) == pytest.approx(0.005, rel=1e-15)
    # Views weighing nothing: the unit is the lightest event that counts.
    no_views = FeatureParams(event_weights={"view": 0.0, "click": 3.0},
                             half_life_s=HALF_LIFE_S, landmark_s=LANDMARK)
    assert faded_bound(no_views, NOW) == pytest.approx(3 * BOUND, rel=1e-15)
    # Past the landmark's range nothing can be compared: no pruning.
    assert faded_bound(params, LANDMARK + 1001 * HALF_LIFE_S) is None


async def test_faded_members_go_from_every_set_and_a_second_pass_waits_for_the_period(
    pinned: Settings, client: RedisPipe, redis_client: redis.Redis
) -> None:
    r = redis_client
    fresh = {"fresh": 50_000.0, "at-bound": BOUND, "just-above": BOUND * 1.001}
    faded = {"faded": BOUND * 0.999, "ancient": 0.5, "zero": 0.0}
    r.zadd(keys.ITEM_POPULARITY, {**fresh, **faded})
    # "shoes" is in the processor's list; "legacy" was written before the list existed.
    r.sadd(keys.POPULARITY_CATEGORIES, "shoes")
    r.zadd(keys.category_popularity("shoes"), {"fresh": 900.0, "s-old": 3.0, "s-older": 1e-9})
    r.zadd(keys.category_popularity("legacy"), {"l-new": 20.0, "l-old": 10.0})
    r.set(keys.category_popularity("not-a-zset"), "x")  # SCAN's TYPE filter leaves it out
    before = pruned_total("global"), pruned_total("category")

    result = await prune_popularity(client, pinned, NOW)

    assert result == Pruned(global_members=3, category_members=3, categories=2)
    assert members(r, keys.ITEM_POPULARITY) == fresh
    assert members(r, keys.category_popularity("shoes")) == {"fresh": 900.0}
    assert members(r, keys.category_popularity("legacy")) == {"l-new": 20.0}
    assert r.smembers(keys.POPULARITY_CATEGORIES) == {"shoes", "legacy"}
    assert (pruned_total("global") - before[0], pruned_total("category") - before[1]) == (3, 3)
    assert 0 < r.ttl(keys.POPULARITY_PRUNE_LOCK) <= pinned.popularity_prune_s

    # Within the period (any replica): nothing, even with faded members back.
    r.zadd(keys.ITEM_POPULARITY, faded)
    assert await prune_popularity(client, pinned, NOW + 60) is None
    assert members(r, keys.ITEM_POPULARITY) == {**fresh, **faded}
    # Once the period key has expired, the next pass prunes them again (and scans no more).
    r.delete(keys.POPULARITY_PRUNE_LOCK)
    r.zadd(keys.category_popularity("unlisted"), {"u-old": 1.0})
    assert await prune_popularity(client, pinned, NOW) == Pruned(3, 0, 2)
    assert members(r, keys.ITEM_POPULARITY) == fresh
    assert r.zcard(keys.category_popularity("unlisted")) == 1


async def test_the_members_the_api_reads_are_never_pruned(
    pinned: Settings, client: RedisPipe, redis_client: redis.Redis
) -> None:
    """A shop whose every item faded (no events for months) keeps the top the API reads, in
    order; only what lies beyond it goes."""
    r = redis_client
    settings = pinned.model_copy(update={"popular_snapshot_size": 3,
                                         "popular_category_snapshot_n": 2})
    r.zadd(keys.ITEM_POPULARITY, {f"i{n}": float(n) for n in range(1, 6)})  # all below BOUND
    r.sadd(keys.POPULARITY_CATEGORIES, "hats")
    r.zadd(keys.category_popularity("hats"), {"h1": 1.0, "h2": 2.0})

    assert await prune_popularity(client, settings, NOW) == Pruned(2, 0, 1)
    assert r.zrange(keys.ITEM_POPULARITY, 0, -1) == ["i3", "i4", "i5"]
    assert r.zrange(keys.category_popularity("hats"), 0, -1) == ["h1", "h2"]


async def test_many_faded_members_go_in_chunks(
    pinned: Settings, client: RedisPipe, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(popularity_prune, "CHUNK", 100)
    r = redis_client
    r.zadd(keys.ITEM_POPULARITY, {f"bot-{n}": 1.0 + n / 1e4 for n in range(1050)})
    r.zadd(keys.ITEM_POPULARITY, {"fresh": 2000.0})

    assert await prune_popularity(client, pinned, NOW) == Pruned(1050, 0, 0)
    assert r.zrange(keys.ITEM_POPULARITY, 0, -1) == ["fresh"]


async def test_off_when_the_period_is_zero(
    pinned: Settings, client: RedisPipe, redis_client: redis.Redis
) -> None:
    redis_client.zadd(keys.ITEM_POPULARITY, {"fresh": 5000.0, "faded": 1.0})
    assert await prune_popularity(client, pinned.model_copy(
        update={"popularity_prune_s": 0}), NOW) is None
    assert redis_client.zcard(keys.ITEM_POPULARITY) == 2
    assert not redis_client.exists(keys.POPULARITY_PRUNE_LOCK)


async def test_the_processor_lists_the_categories_it_writes(
    settings: Settings, redis_client: redis.Redis
) -> None:
    r = redis_client
    r.hset(keys.item_meta("a"), "category", "shoes")
    r.hset(keys.item_meta("b"), "category", "chaussures d'été")
    pipe = RedisPipe(settings.redis_url)
    try:
        t_ms = int(time.time() * 1000) - 60_000
        await FeatureStore(pipe, settings).apply(
            [StreamEvent(str(uuid.uuid4()), "u1", item, "view", t_ms) for item in "abc"])
    finally:
        await pipe.close()
    assert r.smembers(keys.POPULARITY_CATEGORIES) == {"shoes", "chaussures d'été"}


async def test_the_running_processor_prunes(
    settings: Settings, consumers: Consumers, redis_client: redis.Redis,
    kafka_topics: dict[str, str],
) -> None:
    """Through `reco run processor`'s path: the prune runs beside the batch loop, once for two
    replicas, and events keep being applied."""
    r = redis_client
    landmark = time.time() - 10 * HALF_LIFE_S  # one view now: ~1024 in stored units
    settings = settings.model_copy(update={"popularity_landmark_s": landmark,
                                           "popular_snapshot_size": 1,
                                           "popular_category_snapshot_n": 1})
    r.zadd(keys.ITEM_POPULARITY, {"fresh": 50_000.0, "faded": 5.0})
    r.zadd(keys.category_popularity("shoes"), {"fresh": 50_000.0, "s-faded": 5.0})
    r.hset(keys.item_meta("new"), "category", "hats")
    before = pruned_total("global")

    for _ in range(2):
        consumers.start("processor", settings)
    await wait_for(lambda: r.zcard(keys.ITEM_POPULARITY) == 1
                   and r.zcard(keys.category_popularity("shoes")) == 1, "the prune")
    event = {"event_id": str(uuid.uuid4()), "user_id": "u1", "item_id": "new",
             "event_type": "view", "timestamp": int(time.time() * 1000)}
    await produce(settings, [(b"u1", orjson.dumps(event))])
    await wait_for(lambda: r.zscore(keys.ITEM_POPULARITY, "new"), "the event")
    await asyncio.sleep(0.5)  # the second replica's pass, had it not found the period key
    assert r.zrange(keys.ITEM_POPULARITY, 0, -1) == ["new", "fresh"]
    assert r.smembers(keys.POPULARITY_CATEGORIES) == {"shoes", "hats"}
    assert pruned_total("global") - before == 1  # one pass for the two replicas


async def test_the_periodic_task_stops_with_the_processor(
    pinned: Settings, redis_client: redis.Redis
) -> None:
    redis_client.zadd(keys.ITEM_POPULARITY, {"fresh": 50_000.0, "faded": 5.0})
    settings = pinned.model_copy(update={"popularity_landmark_s": time.time() - 10 * HALF_LIFE_S})
    stop = asyncio.Event()
    task = asyncio.create_task(prune_periodically(settings, stop))
    await wait_for(lambda: redis_client.zcard(keys.ITEM_POPULARITY) == 1, "the first pass")
    stop.set()
    await asyncio.wait_for(task, 5)
