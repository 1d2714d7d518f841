"""The processor's Redis I/O (streaming/feature_store.py) against a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from reco import keys
from reco.settings import Settings
from streaming.feature_store import FeatureStore
from streaming.messages import StreamEvent
from streaming.redis_pipe import RedisPipe

pytestmark = pytest.mark.integration

T_MS = int(time.time() * 1000) - 60_000


def ev(user: str, item: str, t_ms: int) -> StreamEvent:
    return StreamEvent(str(uuid.uuid4()), user, item, "view", t_ms)


@pytest.fixture
async def store(settings: Settings, redis_client: redis.Redis) -> AsyncIterator[FeatureStore]:
    client = RedisPipe(settings.redis_url)
    try:
        yield FeatureStore(client, settings)
    finally:
        await client.close()


async def test_recent_items_out_of_step_with_their_times(
    store: FeatureStore, redis_client: redis.Redis
) -> None:
    """`user:recent` and `user:recent_ts` are two keys that can drift apart (an eviction, a
    hand edit): the batch must still apply, and leave them consistent."""
    r, t_s = redis_client, T_MS / 1000
    # u1: "a" is gone from the list but not from the hash (was: ValueError, batch wedged)
    r.rpush(keys.user_recent("u1"), "b")
    r.hset(keys.user_recent_times("u1"), mapping={"a": t_s - 10, "b": t_s - 5})
    # u2: "a" is listed twice and has no time (was: listed a third time)
    r.rpush(keys.user_recent("u2"), "a", "b", "a")
    r.hset(keys.user_recent_times("u2"), mapping={"b": t_s - 5, "z": t_s - 1})

    result = await store.apply([ev("u1", "a", T_MS), ev("u2", "a", T_MS)])

    assert len(result.applied) == 2
    for user in ("u1", "u2"):
        assert r.lrange(keys.user_recent(user), 0, -1) == ["a", "b"]
        assert r.hgetall(keys.user_recent_times(user)) == {"a": repr(t_s), "b": repr(t_s - 5)}
