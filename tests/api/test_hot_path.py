"""The serving fast paths: hand-parsed query strings, the ASGI-dispatched /recommendations,
the pipelined asyncio Redis client and the on-loop popularity refresh (real Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from reco import keys
from reco.settings import Settings
from serving.reco_aio import AsyncPipelineClient
from serving.reco_params import RECO_PARAMS, ParamErrors, parse_query
from serving.reco_redis import PipelineClient, RedisDown
from serving.reco_snapshots import GlobalSignals
from serving.reco_store import FeatureStore, StoreUnavailable
from tests.api.test_recommendations import EXPECTED, assert_ranking, metric


@pytest.mark.parametrize(("raw", "expected"), [
    (b"", {}),
    (b"user_id=u1&k=5", {"user_id": "u1", "k": "5"}),
    (b"user_id=&explain", {"user_id": "", "explain": ""}),
    (b"user_id=a%2Fb&category=home+garden", {"user_id": "a/b", "category": "home garden"}),
    (b"category=caf%C3%A9&&k=1", {"category": "café", "k": "1"}),
])
def test_query_strings_parse_like_starlette(raw: bytes, expected: dict) -> None:
    from starlette.datastructures import QueryParams

    assert parse_query(raw, RECO_PARAMS) == expected == dict(QueryParams(raw))


@pytest.mark.parametrize(("raw", "errors"), [
    # Starlette's QueryParams lets each of these by.
    (b"user_id=u&excludeSeen=false", [("excludeSeen", "unknown parameter; known: category, "
                                       "exclude_seen, explain, k, max_price, min_price, "
                                       "user_id")]),
    (b"k=5&user_id=u&k=7", [("k", "given more than once")]),  # the last value won
    (b"user_id=u&category=%ff%fe", [("category", "must be UTF-8, percent-encoded")]),
    (b"user_id=u&category=\xff", [("category", "must be UTF-8, percent-encoded")]),
])
def test_query_strings_starlette_misreads_are_refused(raw: bytes, errors: list) -> None:
    with pytest.raises(ParamErrors) as refused:
        parse_query(raw, RECO_PARAMS)
    assert refused.value.detail == [{"loc": ["query", field], "field": field, "reason": reason}
                                    for field, reason in errors]


def test_hot_route_serves_counts_and_leaves_other_methods_to_the_router(client) -> None:
    ok = '{method="GET",route="/recommendations",status="200"}'
    before = metric(client, "http_requests_total", ok)
    response = client.get("/recommendations?user_id=u1&k=10")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert_ranking(response.json(), sorted(EXPECTED.items(), key=lambda kv: -kv[1]))
    # Percent-encoded parameters take the slow parser and give the same answer.
    assert client.get("/recommendations?user_id=u%31&k=10").json()["items"] == \
        response.json()["items"]
    assert metric(client, "http_requests_total", ok) == before + 2
    assert client.post("/recommendations?user_id=u1").status_code == 405
    assert client.head("/recommendations?user_id=u1").status_code == 200


def test_async_client_pipelines_concurrent_batches_in_order(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.set("hot:a", "1")
    r.rpush("hot:l", "x", "y")

    async def scenario() -> list:
        client = AsyncPipelineClient(redis_url, timeout_s=1.0)
        try:
            return await asyncio.gather(*[
                client.execute([("GET", "hot:a"), ("LRANGE", "hot:l", 0, -1), ("INCR", "hot:n")])
                for _ in range(50)])
        finally:
            client.close()

    replies = asyncio.run(scenario())
    assert all(reply[:2] == ["1", ["x", "y"]] for reply in replies)
    assert sorted(reply[2] for reply in replies) == list(range(1, 51))


def test_async_client_raises_redis_down_on_errors_and_unreachable_servers(
        redis_url: str) -> None:
    from reco.stack.health import free_port

    async def scenario() -> None:
        client = AsyncPipelineClient(redis_url, timeout_s=1.0)
        with pytest.raises(RedisDown, match="server error"):
            await client.execute([("SET", "hot:k", "v"), ("LPUSH", "hot:k", "x")])
        assert await client.execute([("GET", "hot:k")]) == ["v"]  # the connection is fine
        client.close()
        gone = AsyncPipelineClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        with pytest.raises(RedisDown):
            await gone.execute([("PING",)])

    asyncio.run(scenario())


def test_both_clients_keep_replies_paired_after_a_value_that_is_not_utf8(
        redis_url: str) -> None:
    """hiredis raises on a value it cannot decode, with the batch's later replies unread: the
    blocking client then served them as the next batch's answers."""
    r = redis.Redis.from_url(redis_url)
    r.mset({"hot:bad": b"\xff\xfe", "hot:after": "after", "hot:next": "next"})
    blocking = PipelineClient(redis_url, timeout_s=1.0)
    try:
        with pytest.raises(UnicodeDecodeError):
            blocking.execute([("GET", "hot:bad"), ("GET", "hot:after")])
        assert blocking.execute([("GET", "hot:next")]) == ["next"]
    finally:
        blocking.close()

    async def scenario() -> list:
        client = AsyncPipelineClient(redis_url, timeout_s=1.0)
        try:
            with pytest.raises((UnicodeDecodeError, RedisDown)):
                await client.execute([("GET", "hot:bad"), ("GET", "hot:after")])
            return await client.execute([("GET", "hot:next")])
        finally:
            client.close()

    assert asyncio.run(scenario()) == ["next"]


@pytest.mark.parametrize(("url", "auth"), [
    ("redis://:pw@h:6379/0", ("AUTH", "pw")),  # the form Redis 5 (no ACL users) accepts
    ("redis://alice:pw@h:6379/2", ("AUTH", "alice", "pw")),
])
def test_fast_clients_authenticate_as_redis_py_does(url: str, auth: tuple) -> None:
    from redis.connection import parse_url

    from serving.reco_redis import setup_commands

    assert setup_commands(parse_url(url))[0] == auth


def test_async_client_times_out_a_batch_left_unanswered_and_only_that_one(
        redis_url: str) -> None:
    """Redis stops answering (CLIENT PAUSE) after the first batch: the second fails with a
    timeout at its own deadline (not the first batch's), together with the batch queued
    behind it, and the next call, once Redis answers again, reconnects."""
    r = redis.Redis.from_url(redis_url)
    pause_s = 2.0  # a second past the batches' 1 s timeouts: margin on a loaded machine
    paused_until = 0.0

    async def scenario() -> None:
        nonlocal paused_until
        client = AsyncPipelineClient(redis_url, timeout_s=1.0)
        try:
            first_id = (await client.execute([("CLIENT", "ID")]))[0]
            await asyncio.sleep(0.6)
            r.client_pause(int(pause_s * 1000), all=True)
            paused_until = time.monotonic() + pause_s
            late = asyncio.ensure_future(client.execute([("PING",)]))
            behind = asyncio.ensure_future(client.execute([("PING",)]))
            await asyncio.sleep(0.5)  # past the first batch's deadline, 0.5 s before its own
            assert not late.done()
            for batch in (late, behind):
                with pytest.raises(RedisDown, match="timed out after 1.0s"):
                    await batch
            await asyncio.sleep(paused_until - time.monotonic() + 0.1)
            assert (await client.execute([("CLIENT", "ID")]))[0] != first_id  # reconnected
        finally:
            client.close()

    try:
        asyncio.run(scenario())
    finally:  # the session's Redis serves the next tests: wait the pause out
        time.sleep(max(0.0, paused_until - time.monotonic()))
        r.close()


def test_refused_cache_writes_are_counted_but_refused_reads_trip_the_breaker(
        redis_url: str) -> None:
    """Both clients, writes riding with round 1 and flushed alone: an error reply to a cache
    write is counted; one to a read still means the store is unusable."""
    from prometheus_client import REGISTRY

    from tests.api.conftest import out_of_memory, put_recent

    def refused() -> float:
        return REGISTRY.get_sample_value("recommendation_cache_write_errors_total") or 0.0

    async def on_loop() -> None:
        store.queue_cache_write("u1", "v", b"entry", 60)
        assert (await store.first_read_async("u1", "v")).recent == ["A", "B"]
        store.queue_cache_write("u1", "v", b"entry", 60)
        await store.flush_cache_writes_async()

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    put_recent(r, "u1", [("A", 1.0), ("B", 0.5)])
    store = FeatureStore(redis_url, timeout_s=1.0, retry_s=60.0)
    before = refused()
    with out_of_memory(r):
        store.queue_cache_write("u1", "v", b"entry", 60)
        assert store.first_read("u1", "v").recent == ["A", "B"]
        store.queue_cache_write("u1", "v", b"entry", 60)
        store.flush_cache_writes()
        asyncio.run(on_loop())  # one loop: the asyncio client's connection belongs to it
        assert store.first_read("u1", "v").cached is None  # not marked down, nothing stored
    assert refused() == before + 4
    r.delete(keys.user_recent("u1"))
    r.set(keys.user_recent("u1"), "not a list")  # LRANGE answers WRONGTYPE
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.first_read("u1", "v")
    with pytest.raises(StoreUnavailable, match="marked down"):
        store.first_read("u1", "v")
    store.close()
    r.close()


def test_a_re_stamped_cache_entry_keeps_its_expiry_and_is_never_recreated(
        redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = FeatureStore(redis_url, timeout_s=1.0)
    key = keys.reco_cache("u1", "v")
    store.queue_cache_write("u1", "v", b"first", 60)
    store.flush_cache_writes()
    r.expire(key, 30)
    store.queue_cache_write("u1", "v", b"re-stamped", None)
    store.flush_cache_writes()
    assert r.get(key) == "re-stamped" and 0 < r.ttl(key) <= 30
    r.delete(key)  # expired between the hit and its re-stamp
    store.queue_cache_write("u1", "v", b"late", None)
    store.flush_cache_writes()
    assert not r.exists(key)
    store.close()
    r.close()


def test_on_loop_refresh_matches_the_blocking_one(redis_url: str, settings: Settings,
                                                  monkeypatch) -> None:
    r = redis.Redis.from_url(redis_url)
    for n in range(30):
        r.hset(keys.item_meta(f"i{n}"), mapping={"category": f"c{n % 3}", "price": n})
        r.sadd(keys.ITEM_IDS, f"i{n}")
    r.zadd(keys.ITEM_POPULARITY, {f"i{n}": float(n % 7 + n / 100) for n in range(30)})
    r.zadd(keys.ITEM_POPULARITY, {"no-meta": 3.5})  # popular, unknown to the catalogue
    monkeypatch.setattr("serving.popularity_snapshot.CHUNK", 4)  # many slices
    blocking = GlobalSignals(settings)
    blocking.refresh()
    sliced = GlobalSignals(settings)

    async def twice() -> None:
        await sliced.refresh_async()  # catalogue load + the unknown item's appended row
        await sliced.refresh_async()  # every member known now: the row-mapped path

    asyncio.run(twice())
    for signals in (blocking, sliced):
        signals.stop()
    a, b = blocking.items, sliced.items
    assert [a.ids[row] for row in a.popular_rows] == [b.ids[row] for row in b.popular_rows]
    assert a.popularity[a.popular_rows].tolist() == b.popularity[b.popular_rows].tolist()
    assert b.ids[b.popular_rows[0]] == "i27" and "no-meta" in b.row


def test_on_loop_refresh_counts_a_member_seen_in_two_chunks_once(redis_url: str,
                                                                 settings: Settings,
                                                                 monkeypatch) -> None:
    """i9 drops from the first chunk to the second between the two reads; with an item the
    catalogue lacks, the refresh takes `with_popularity`, which kept both sightings."""
    r = redis.Redis.from_url(redis_url)
    for n in range(10):
        r.hset(keys.item_meta(f"i{n}"), mapping={"category": "c", "price": n})
        r.sadd(keys.ITEM_IDS, f"i{n}")
    r.zadd(keys.ITEM_POPULARITY, {**{f"i{n}": float(n) for n in range(10)}, "no-meta": 0.5})
    monkeypatch.setattr("serving.popularity_snapshot.CHUNK", 4)
    signals = GlobalSignals(settings)
    read = signals.aio.execute

    async def moving_i9(commands):
        replies = await read(commands)
        if commands[0][:3] == ("ZRANGE", keys.ITEM_POPULARITY, 0):  # after the first chunk
            r.zadd(keys.ITEM_POPULARITY, {"i9": 4.5})
        return replies

    signals.aio.execute = moving_i9
    asyncio.run(signals.refresh_async())
    signals.stop()
    items = signals.items
    # i5 moved up into the first chunk's ranks after they were read: missed until the next.
    assert [items.ids[row] for row in items.popular_rows] == [
        "i9", "i8", "i7", "i6", "i4", "i3", "i2", "i1", "no-meta"]
    assert items.popularity[items.row["i9"]] == 9.0  # the first sighting


def test_a_list_ranked_before_a_new_event_is_never_served_after_it(client, world) -> None:
    """Requests now overlap on the event loop: an event can land between a miss's reads and
    its cache write. The entry is stamped with the recent list the ranking saw, so it is a miss."""
    from tests.api.conftest import touch
    from tests.api.test_recommendations import get

    io = client.app.state.service.io
    read = io.second_read

    async def event_during_the_miss(*args):
        second = await read(*args)
        touch(world["redis"], "u1", "Y", world["now"])  # Y becomes the head meanwhile
        return second

    io.second_read = event_during_the_miss
    stale = get(client)
    io.second_read = read
    assert stale["cached"] is False and "Y" in [i["item_id"] for i in stale["items"]]
    fresh = get(client)  # the stale entry was written, but for the list before Y
    assert fresh["cached"] is False and "Y" not in [i["item_id"] for i in fresh["items"]]
    assert get(client)["cached"] is True
