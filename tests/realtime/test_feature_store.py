"""The processor's Redis I/O (streaming/feature_store.py) against a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis

from reco import keys
from reco.settings import Settings
from streaming.feature_store import AppliedBatch, FeatureStore
from streaming.messages import StreamEvent
from streaming.redis_pipe import RedisPipe
from tests.reliability.conftest import assert_same_features, dump

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


async def test_seen_items_keep_the_newest_touch_and_the_newest_items(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """`user:seen_at` holds each item's latest touch (a late event does not move it back) and
    only the user's newest `seen_max` items: a miss reads all of them."""
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings.model_copy(update={"seen_max": 3}))
    try:
        await store.apply([ev("u1", "a", T_MS), ev("u1", "b", T_MS + 1), ev("u1", "a", T_MS + 5)])
        await store.apply([ev("u1", "c", T_MS + 2), ev("u1", "a", T_MS - 100)])  # a: late
        seen = keys.user_seen("u1")
        assert redis_client.zrange(seen, 0, -1, withscores=True) == [
            ("b", T_MS + 1.0), ("c", T_MS + 2.0), ("a", T_MS + 5.0)]
        await store.apply([ev("u1", "d", T_MS + 3), ev("u1", "e", T_MS + 4)])
        assert redis_client.zrange(seen, 0, -1) == ["d", "e", "a"]  # b and c were the oldest
        assert 0 < redis_client.ttl(seen) <= settings.seen_ttl_s

        off = FeatureStore(client, settings.model_copy(update={"seen_max": 0}))
        await off.apply([ev("u2", "a", T_MS)])
        assert not redis_client.exists(keys.user_seen("u2"))
        assert redis_client.lrange(keys.user_recent("u2"), 0, -1) == ["a"]
    finally:
        await client.close()


async def test_the_offline_seen_items_are_the_ones_redis_keeps(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """`reco.event_order.newest_seen` (offline evaluation) keeps what the processor's trim and
    the API's read keep, ties included (equal times: Redis orders by member)."""
    import pandas as pd

    from reco.event_order import newest_seen

    touches = [("u1", "b", T_MS), ("u1", "d", T_MS), ("u1", "a", T_MS), ("u1", "c", T_MS - 1),
               ("u1", "e", T_MS - 5), ("u1", "c", T_MS), ("u2", "x", T_MS), ("u2", "y", T_MS)]
    client = RedisPipe(settings.redis_url)
    try:
        store = FeatureStore(client, settings.model_copy(update={"seen_max": 3}))
        await store.apply([ev(u, i, t) for u, i, t in touches])
    finally:
        await client.close()
    frame = pd.DataFrame(touches, columns=["user_id", "item_id", "ms"]).assign(
        ts=lambda f: f.ms / 1000)
    served = {u: redis_client.zrange(keys.user_seen(u), 0, 2, desc=True) for u in ("u1", "u2")}
    assert served == newest_seen(frame, 3) == {"u1": ["d", "c", "b"], "u2": ["y", "x"]}


class Interleaved(RedisPipe):
    """A writer connection that lets another processor run once, just before this one's first
    command (`at="check"`) or its first MULTI/EXEC (`at="exec"`)."""

    def __init__(self, url: str, at: str, other: Callable[[], Awaitable[object]]) -> None:
        super().__init__(url)
        self.at = at
        self.other: Callable[[], Awaitable[object]] | None = other

    async def execute(self, commands: Any, transaction: bool = False) -> list[Any]:
        if self.other is not None and (self.at == "check" or transaction):
            other, self.other = self.other, None
            await other()
        return await super().execute(commands, transaction)


async def race(settings: Settings, redis_client: redis.Redis, events: list[StreamEvent],
               at: str, other_first: Callable[[RedisPipe], Awaitable[object]],
               log_end: Callable[[int], int | None] = lambda p: None,
               ) -> tuple[AppliedBatch, dict[str, Any], dict[str, Any]]:
    """Apply `events` while another processor runs `other_first` (on its own connection) just
    before this one's check or EXEC (`at`), then again on a flushed Redis by one processor
    alone. Returns the raced result, and the raced and the lone Redis states (with the
    applied positions, which `dump` leaves out)."""
    other, mine, lone = (RedisPipe(settings.redis_url) for _ in range(3))
    writer = Interleaved(settings.redis_url, at, lambda: other_first(other))
    try:
        result = await FeatureStore(mine, settings, writer, log_end).apply(events)
        raced = dump(redis_client) | positions(redis_client)
        redis_client.flushdb()
        await FeatureStore(lone, settings).apply(events)  # one processor, once
    finally:
        for pipe in (other, mine, lone, writer):
            await pipe.close()
    return result, raced, dump(redis_client) | positions(redis_client)


@pytest.mark.parametrize("at", ["check", "exec"])
async def test_a_batch_two_processors_hold_is_applied_once(
    settings: Settings, redis_client: redis.Redis, at: str
) -> None:
    """After a rebalance the old and the new owner can both plan the same batch (no markers
    yet). Whichever writes second must see the other's markers, before its write ("check") or
    through its aborted EXEC ("exec"), and plan again: no increment counted twice."""
    events = [ev("u1", "a", T_MS), ev("u1", "b", T_MS + 1000), ev("u2", "a", T_MS + 2000)]
    result, raced, lone = await race(
        settings, redis_client, events, at,
        lambda pipe: FeatureStore(pipe, settings).apply(events[:2]))

    assert [e.event_id for e in result.applied] == [events[2].event_id]
    assert result.duplicates == 2
    assert_same_features(raced, lone)


def test_a_write_conflict_in_the_overlapped_loop_is_not_a_processing_error() -> None:
    """After a rebalance another processor may apply a batch first: expected, so it must not
    feed HighProcessingErrorRate; any other failure still counts."""
    from prometheus_client import REGISTRY

    from streaming.feature_store import WriteConflict
    from streaming.overlap import _failed

    def errors(kind: str) -> float:
        return REGISTRY.get_sample_value("event_processing_errors_total",
                                         {"consumer": "g-test", "reason": kind}) or 0.0

    _failed("g-test", WriteConflict("events of the batch were applied meanwhile"))
    assert errors("WriteConflict") == 0.0
    _failed("g-test", RuntimeError("boom"))
    assert errors("RuntimeError") == 1.0


def positioned(events: list[StreamEvent], first_offset: int, log_ms: int,
               partition: int = 0) -> list[StreamEvent]:
    """The events as records of one partition from `first_offset` on, timestamped from
    `log_ms` on by the producer."""
    return [msgspec.structs.replace(e, partition=partition, offset=first_offset + j,
                                    log_ms=log_ms + j) for j, e in enumerate(events)]


def features_only(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("event:seen:")}


def positions(r: redis.Redis) -> dict[str, str]:
    return {key: r.get(key) for key in r.keys(keys.APPLIED_POSITION_PATTERN)}


def position(r: redis.Redis, settings: Settings, partition: int = 0) -> str | None:
    return r.get(keys.applied_position(settings.topic_events, partition))


async def test_a_redelivery_below_the_applied_offset_is_skipped_after_its_markers_expired(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Each partition's applied position is written with the features, so records redelivered
    from the log (offsets committed late, expired or reset) are recognised whatever their age:
    the markers' window only has to cover events sent twice."""
    r = redis_client
    batch = positioned([ev("u1", "a", T_MS), ev("u1", "b", T_MS + 1), ev("u2", "a", T_MS + 2)],
                       10, T_MS + 50)
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings, log_end=lambda p: 13)
    try:
        assert len((await store.apply(batch)).applied) == 3
        assert position(r, settings) == f"13 {T_MS + 52}"
        once = features_only(dump(r))
        r.delete(*r.keys("event:seen:*"))  # past RECO_DEDUP_TTL_S

        again = await store.apply(batch)
        assert (again.applied, again.duplicates) == ([], 3)
        assert features_only(dump(r)) == once

        # Redelivered together with what follows them: only the new records count.
        later = positioned([ev("u1", "c", T_MS + 3), ev("u3", "a", T_MS + 4)], 13, T_MS + 60)
        store.log_end = lambda p: 15
        mixed = await store.apply([*batch[1:], *later])
        assert [e.event_id for e in mixed.applied] == [e.event_id for e in later]
        assert mixed.duplicates == 2
        assert position(r, settings) == f"15 {T_MS + 61}"
        assert r.lrange(keys.user_recent("u1"), 0, -1) == ["c", "b", "a"]
    finally:
        await client.close()


async def test_a_recreated_topic_is_not_taken_for_a_redelivery(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A topic deleted and recreated restarts its offsets at 0: those records were never
    applied. A log ending before the applied offset, with records newer than any applied,
    starts the position afresh; a refilled log past it still has records newer than everything
    applied."""
    r = redis_client
    key = keys.applied_position(settings.topic_events, 0)
    client = RedisPipe(settings.redis_url)
    try:
        r.set(key, f"1000 {T_MS}")
        store = FeatureStore(client, settings, log_end=lambda p: 2)
        short = await store.apply(positioned([ev("u1", "a", T_MS), ev("u1", "b", T_MS)], 0,
                                             T_MS + 10))
        assert (len(short.applied), short.duplicates) == (2, 0)
        assert r.get(key) == f"2 {T_MS + 11}"

        r.set(key, f"1000 {T_MS}")
        store.log_end = lambda p: 5000
        refilled = await store.apply(positioned([ev("u2", "a", T_MS)], 7, T_MS + 1))
        assert (len(refilled.applied), refilled.duplicates) == (1, 0)
        assert r.get(key) == f"1000 {T_MS + 1}"
    finally:
        await client.close()


async def test_a_stale_view_of_the_log_neither_skips_nor_moves_the_position_back(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A log end below the applied offset with no newer record is the consumer's stale view (a
    partition just revoked while another copy wrote on, a leader change): the batch's
    redeliveries are left to the markers, and the position keeps what was applied."""
    r = redis_client
    key = keys.applied_position(settings.topic_events, 0)
    r.set(key, f"1000 {T_MS + 100}")
    client = RedisPipe(settings.redis_url)
    try:
        store = FeatureStore(client, settings, log_end=lambda p: 10)
        batch = positioned([ev("u1", "a", T_MS), ev("u1", "b", T_MS)], 8, T_MS)
        assert len((await store.apply(batch)).applied) == 2
        assert r.get(key) == f"1000 {T_MS + 100}"
        assert (await store.apply(batch)).duplicates == 2  # their markers
    finally:
        await client.close()


async def test_positions_decide_nothing_while_the_log_end_is_unknown(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Without the consumer's view of the log (no fetch yet, the partition moved), a record
    below the position might belong to a recreated topic: markers alone decide."""
    r = redis_client
    r.set(keys.applied_position(settings.topic_events, 0), f"1000 {T_MS + 100}")
    client = RedisPipe(settings.redis_url)
    try:
        store = FeatureStore(client, settings)  # log_end: unknown
        batch = positioned([ev("u1", "a", T_MS)], 5, T_MS)
        assert len((await store.apply(batch)).applied) == 1
        assert (await store.apply(batch)).duplicates == 1  # its marker
        assert position(r, settings) == f"1000 {T_MS + 100}"  # never moves back
    finally:
        await client.close()


async def test_a_batch_two_processors_hold_is_applied_once_without_markers(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """As above, with the other processor's markers gone before this one's check (a window
    shorter than the race): its partition position, checked like the markers, makes the
    second writer plan again and skip what the first applied. (Between the check and EXEC,
    the next test.)"""
    events = positioned([ev("u1", "a", T_MS), ev("u1", "b", T_MS + 1000),
                         ev("u2", "a", T_MS + 2000)], 0, T_MS + 5000)

    async def other_applies_first(pipe: RedisPipe) -> None:
        await FeatureStore(pipe, settings, log_end=lambda p: 3).apply(events[:2])
        redis_client.delete(*redis_client.keys("event:seen:*"))

    result, raced, lone = await race(settings, redis_client, events, "check",
                                     other_applies_first, lambda p: 3)
    assert [e.event_id for e in result.applied] == [events[2].event_id]
    assert result.duplicates == 2
    assert raced[keys.applied_position(settings.topic_events, 0)] == f"3 {T_MS + 5002}"
    assert_same_features(features_only(raced), features_only(lone))


async def test_a_position_moved_between_the_check_and_exec_aborts_the_write(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The positions are WATCHed like the markers: another processor that applies the
    partition's records after this one's check (and whose markers are gone) aborts its EXEC;
    the batch is planned again and found applied."""
    events = positioned([ev("u1", "a", T_MS), ev("u1", "b", T_MS + 1000),
                         ev("u2", "a", T_MS + 2000)], 0, T_MS + 5000)

    async def other_applies_the_partition() -> None:
        redis_client.set(keys.applied_position(settings.topic_events, 0), f"3 {T_MS + 5002}")

    pipe = RedisPipe(settings.redis_url)
    writer = Interleaved(settings.redis_url, "exec", other_applies_the_partition)
    try:
        result = await FeatureStore(pipe, settings, writer, lambda p: 3).apply(events)
    finally:
        await pipe.close()
        await writer.close()
    assert (result.applied, result.duplicates) == ([], 3)
    assert redis_client.keys("user:*") == []


async def test_an_event_for_the_item_named_version_counts_in_its_category(
    store: FeatureStore, redis_client: redis.Redis
) -> None:
    """Its meta key was the catalogue version counter's: the category read met a string
    (WRONGTYPE) and the batch was retried for ever."""
    r = redis_client
    r.hset(keys.item_meta("version"), mapping={"category": "c1"})
    r.incr(keys.ITEM_META_VERSION)

    result = await store.apply([ev("u1", "version", T_MS)])

    assert len(result.applied) == 1
    assert r.zscore(keys.category_popularity("c1"), "version") > 0


async def test_an_item_whose_meta_key_is_not_a_hash_applies_without_a_category(
    store: FeatureStore, redis_client: redis.Redis
) -> None:
    """The counter releases before 2026-11-28 left at `item:meta:version` (or any string where
    a metadata hash belongs) made the category read fail, and the whole batch with it, on every
    retry: one event for item `version` stopped its partition's features for good."""
    r = redis_client
    r.incr(keys.ITEM_META_VERSION_LEGACY)
    r.hset(keys.item_meta("ok-item"), mapping={"category": "c1"})

    result = await store.apply([ev("u1", "ok-item", T_MS), ev("u2", "version", T_MS)])

    assert len(result.applied) == 2
    assert r.zscore(keys.category_popularity("c1"), "ok-item") > 0
    assert r.zscore(keys.ITEM_POPULARITY, "version") > 0
    assert r.lrange(keys.user_recent("u2"), 0, -1) == ["version"]
    assert r.get(keys.ITEM_META_VERSION_LEGACY) == "1"  # left as it was


async def test_a_new_co_view_partner_enters_a_full_set_as_old_pairs_age(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Plain counts never aged: with the set full of pairs counted twice, a new partner (one
    count) was trimmed by the transaction that added it, for good."""
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings.model_copy(update={"coview_max": 3}))
    month_ago = T_MS - 60 * 86_400_000
    try:
        for n in range(3):  # X and p{n} viewed together, twice, two months ago
            for copy in range(2):
                user, at = f"old{n}-{copy}", month_ago + 1000 * n
                await store.apply([ev(user, "X", at), ev(user, f"p{n}", at + 1)])
        await store.apply([ev("now", "X", T_MS), ev("now", "new", T_MS + 1)])
    finally:
        await client.close()
    partners = redis_client.zrange(keys.co_view("X"), 0, -1, desc=True)
    assert len(partners) == 3 and partners[0] == "new"
