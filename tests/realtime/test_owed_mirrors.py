"""The ingest API's owed mirrors (serving/owed_mirrors.py): stored catalogue rows Redis refused,
mirrored again in the background; which revision of an item is owed (real Redis)."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aredis

from reco import keys
from serving.catalogue import tombstone
from serving.owed_mirrors import OwedMirrors


def row(item: str, revision: int, category: str = "c1") -> tuple:
    """A stored row as UPSERT_ITEMS returns it."""
    return (item, None, category, None, True, 1.7e9, revision, False)


async def test_an_item_owes_its_newest_revision(redis_url: str,
                                                redis_client: redis.Redis) -> None:
    client = aredis.Redis.from_url(redis_url)
    owed = OwedMirrors(client)
    try:
        owed.owe([row("a", 5, "new")])
        owed.owe([row("a", 3, "old"), row("b", 1)])  # an older write refused after a newer one
        assert {item: r[6] for item, r in owed.rows.items()} == {"a": 5, "b": 1}
        assert await owed.retry()
    finally:
        await client.aclose()
    assert owed.rows == {}
    assert redis_client.hmget(keys.item_meta("a"), "category", "revision") == ["new", "5"]


async def test_a_row_owed_again_during_a_retry_stays_owed(redis_url: str,
                                                          redis_client: redis.Redis) -> None:
    """The retry mirrors what was owed when it started; a newer revision owed meanwhile is for
    the next retry, not dropped with the row the retry took."""
    client = aredis.Redis.from_url(redis_url)
    owed = OwedMirrors(client)
    try:
        owed.owe([row("a", 1)])
        retry = asyncio.ensure_future(owed.retry())
        await asyncio.sleep(0)  # the retry took its rows and waits for Redis
        owed.owe([row("a", 2, "newer")])
        assert await retry
        assert [r[6] for r in owed.rows.values()] == [2]
        assert redis_client.hget(keys.item_meta("a"), "revision") == "1"
        assert await owed.retry()
    finally:
        await client.aclose()
    assert owed.rows == {}
    assert redis_client.hmget(keys.item_meta("a"), "category", "revision") == ["newer", "2"]


async def test_a_retry_redis_refuses_keeps_the_rows(redis_client: redis.Redis) -> None:
    from reco.stack.health import free_port

    client = aredis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens
    owed = OwedMirrors(client)
    try:
        owed.owe([row("a", 1)])
        assert not await owed.retry()
    finally:
        await client.aclose()
    assert list(owed.rows) == ["a"]


async def test_the_retries_go_on_after_a_surprise(redis_url: str,
                                                  redis_client: redis.Redis) -> None:
    """An exception no retry expects ended the background task: nothing owed was mirrored
    again, and stopping the API raised it."""
    client = aredis.Redis.from_url(redis_url)
    owed = OwedMirrors(client, retry_s=0.05)
    retry, calls = owed.retry, []

    async def surprising_once() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("surprise")
        return await retry()

    owed.retry = surprising_once
    owed.owe([row("a", 1)])
    owed.start()
    try:
        for _ in range(100):
            if not owed.rows:
                break
            await asyncio.sleep(0.05)
    finally:
        await owed.stop()
        await client.aclose()
    assert len(calls) >= 2 and owed.rows == {}
    assert redis_client.hget(keys.item_meta("a"), "revision") == "1"


async def test_a_delete_owed_after_an_upsert_is_the_revision_mirrored(
        redis_url: str, redis_client: redis.Redis) -> None:
    """An upsert and then the item's delete, both refused: the delete (newer) is what is owed,
    and an older upsert owed later (another request's, slower) does not replace it."""
    client = aredis.Redis.from_url(redis_url)
    owed = OwedMirrors(client)
    try:
        owed.owe([row("a", 1)])
        owed.owe([tombstone("a", 2)])
        owed.owe([row("a", 1)])
        assert await owed.retry()
    finally:
        await client.aclose()
    assert redis_client.hgetall(keys.item_meta("a")) == {"revision": "2", "deleted": "1"}
    assert not redis_client.sismember(keys.ITEM_IDS, "a")
