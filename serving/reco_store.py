"""Feature reads of the recommendation API: at most two pipelined Redis round trips per request.

Round 1 (user keys + one global hash): cached response, recent list, latest event id, active
model versions, plus any queued cache writes. Round 2 (only on a cache miss): the source items'
last-touch times, their co-view / KNN / ALS item lists not already parsed in process, and the
user's ALS and SASRec candidates (same). Every command names one user or one item, so the
layout works on Redis Cluster.

By default the reads go through a minimal asyncio client (serving/reco_aio.py): concurrent
requests pipeline on one connection and the loop serves others during a round trip (redis-py's
asyncio client was measured too slow for this path). `reco_redis_in_threads` makes blocking
calls (serving/reco_redis.py) in a threadpool instead. Short timeouts plus a breaker keep a
sick store from holding requests.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import hiredis
import numpy as np

from reco import keys, neighbours
from reco.ranking import Lists
from reco.settings import Settings
from reco.timing import REDIS_OPERATION_SECONDS
from serving import reco_metrics as metrics
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import Command, PipelineClient, RedisDown

log = logging.getLogger(__name__)
ITEM2VEC, ALS, SASREC = "item2vec", "als", "sasrec"
USER_KINDS = ("user_cf", "user_seq")  # ListKey kinds owned by a user, not an item
WRITE_ERROR_LOG_S = 60.0  # refused cache writes are logged at most this often (every miss)


# The key of each versioned list kind (co-view sets are sorted sets, read apart).
_LIST_KEYS = {"knn": keys.item_knn, "item_cf": keys.item_cf_neighbours,
              "user_cf": keys.user_cf, "user_seq": keys.user_seq}


class StoreUnavailable(Exception):
    """Redis is unreachable or timing out; callers serve the fallback."""


class ListKey(NamedTuple):
    """One item's neighbour list: kind "coview" | "knn" | "item_cf", model version or "";
    or (kind "user_cf" | "user_seq", `item_id` then being a user id) one user's ALS or SASRec
    candidates."""

    kind: str
    item_id: str
    version: str


@dataclass(frozen=True)
class FirstRead:
    cached: str | None
    recent: list[str]
    versions: dict[str, str]
    last_event: str | None = None  # id of the user's latest applied event


# A user's list as published: (ids, scores, the ids' numbers in the model's item list or None).
CodedLists = tuple[list[str], np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class SecondRead:
    times: dict[str, float]
    lists: dict[ListKey, Lists | CodedLists]  # CodedLists for USER_KINDS
    seen: list[str]


class FeatureStore:
    """The API's Redis reads and its cache writes, behind a small circuit breaker.

    Each read exists twice over the same command building and reply parsing: blocking
    (`first_read`, ...: threadpool mode, the demo's offline comparisons, tests) and on the
    event loop (`first_read_async`, ...: the default serving mode).
    """

    def __init__(self, url: str, timeout_s: float = 0.25, retry_s: float = 1.0,
                 neighbours_n: int = 50, similar_n: int = 100, seen_max: int = 500) -> None:
        self.client = PipelineClient(url, timeout_s)
        self.aio = AsyncPipelineClient(url, timeout_s)
        self.retry_s = retry_s
        self.neighbours_n = neighbours_n
        self.similar_n = similar_n
        self.seen_max = seen_max
        self._down_until = 0.0
        # Cache writes ride along with the next request's first pipeline (or a flush soon
        # after): a cache miss then costs two round trips in total, not three.
        self._pending: list[Command] = []
        self._pending_lock = threading.Lock()
        self._timers: dict[str, Any] = {}  # operation -> histogram child (labels() is slow)
        self._write_error_logged_at = -WRITE_ERROR_LOG_S

    @classmethod
    def from_settings(cls, settings: Settings, timeout_s: float | None = None) -> FeatureStore:
        timeout = settings.reco_redis_timeout_s if timeout_s is None else timeout_s
        return cls(settings.redis_url, timeout, settings.reco_redis_retry_s,
                   settings.reco_neighbours_n, settings.reco_similar_n, settings.seen_max)

    def _timer(self, operation: str) -> Any:
        timer = self._timers.get(operation)
        if timer is None:
            timer = self._timers[operation] = REDIS_OPERATION_SECONDS.labels(operation)
        return timer

    def _unavailable(self, exc: RedisDown) -> StoreUnavailable:
        self._down_until = time.monotonic() + self.retry_s
        log.warning("feature store unavailable, serving fallback for %.1fs: %s",
                    self.retry_s, exc)
        return StoreUnavailable(str(exc))

    def _run(self, operation: str, commands: Sequence[Command], writes: int = 0) -> list:
        """Replies to `commands`, the first `writes` of them cache writes (see `_writes_done`)."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("feature store marked down")
        started = time.perf_counter()
        try:
            replies = self.client.execute(commands, writes)
        except RedisDown as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._timer(operation).observe(time.perf_counter() - started)
        if writes:
            self._writes_done(replies, writes)
        return replies

    async def _run_async(self, operation: str, commands: Sequence[Command],
                         writes: int = 0) -> list:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("feature store marked down")
        started = time.perf_counter()
        try:
            replies = await self.aio.execute(commands, writes)
        except RedisDown as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._timer(operation).observe(time.perf_counter() - started)
        if writes:
            self._writes_done(replies, writes)
        return replies

    def _writes_done(self, replies: list, writes: int) -> None:
        """Count the cache writes Redis refused (OOM under noeviction, READONLY replica): a
        lost entry only costs a later miss, and the reads beside it worked, so neither the
        request nor the breaker fails over it."""
        refused = [r for r in replies[:writes] if isinstance(r, hiredis.ReplyError)]
        if not refused:
            return
        metrics.CACHE_WRITE_ERRORS.inc(len(refused))
        now = time.monotonic()
        if now - self._write_error_logged_at >= WRITE_ERROR_LOG_S:  # not once per miss
            self._write_error_logged_at = now
            log.warning("Redis refused %d cache write(s), serving on without them: %s",
                        len(refused), refused[0])

    # -- round 1: cached response, recent list, model versions (+ queued cache writes) -----

    def _first_commands(self, user_id: str, variant: str) -> tuple[list[Command], int]:
        """Round 1's commands, queued cache writes first, and how many writes lead."""
        writes = self._take_pending()
        return [*writes,
                ("GET", keys.reco_cache(user_id, variant)),
                ("LRANGE", keys.user_recent(user_id), 0, -1),
                ("HGETALL", keys.MODEL_VERSIONS),
                ("GET", keys.user_last_event(user_id))], len(writes)

    @staticmethod
    def _first_reply(replies: list) -> FirstRead:
        cached, recent, versions, last_event = replies[-4:]
        return FirstRead(cached, recent, _hash(versions), last_event)

    def first_read(self, user_id: str, variant: str) -> FirstRead:
        commands, writes = self._first_commands(user_id, variant)
        return self._first_reply(self._run("reco_first_read", commands, writes))

    async def first_read_async(self, user_id: str, variant: str) -> FirstRead:
        commands, writes = self._first_commands(user_id, variant)
        return self._first_reply(await self._run_async("reco_first_read", commands, writes))

    # -- round 2 (cache miss): times, lists not parsed in process (items, ALS, SASRec), seen --

    def _second_commands(self, user_id: str, sources: Sequence[str],
                         lists: Sequence[ListKey]) -> list[Command]:
        commands: list[Command] = []
        if sources:
            commands.append(("HMGET", keys.user_recent_times(user_id), *sources))
        for key in lists:
            if key.kind == "coview":
                commands.append(("ZRANGE", keys.co_view(key.item_id), 0,
                                 self.neighbours_n - 1, "REV", "WITHSCORES"))
            else:
                commands.append(("GET", _LIST_KEYS[key.kind](key.item_id, key.version)))
        if self.seen_max:  # the newest seen_max: the processor trims to its own setting
            commands.append(("ZRANGE", keys.user_seen(user_id), 0, self.seen_max - 1, "REV"))
        return commands

    def _second_reply(self, replies_list: list, sources: Sequence[str],
                      lists: Sequence[ListKey]) -> SecondRead:
        replies = iter(replies_list)
        times: dict[str, float] = {}
        if sources:
            times = {s: float(t) for s, t in zip(sources, next(replies), strict=True)
                     if t is not None}
        found = {key: zset_pairs(next(replies)) if key.kind == "coview"
                 else neighbours.decode_coded(next(replies)) if key.kind in USER_KINDS
                 else neighbours.decode(next(replies), self.neighbours_n)
                 for key in lists}
        return SecondRead(times, found, next(replies, []))

    def second_read(self, user_id: str, sources: Sequence[str],
                    lists: Sequence[ListKey]) -> SecondRead:
        """Round 2: the sources' last-touch times, the lists not cached in process (items'
        and the user's model candidates), and the user's seen set."""
        commands = self._second_commands(user_id, sources, lists)
        return self._second_reply(self._run("reco_second_read", commands), sources, lists)

    async def second_read_async(self, user_id: str, sources: Sequence[str],
                                lists: Sequence[ListKey]) -> SecondRead:
        commands = self._second_commands(user_id, sources, lists)
        return self._second_reply(await self._run_async("reco_second_read", commands), sources,
                                  lists)

    # -- similar items ---------------------------------------------------------------------

    def _similar_commands(self, item_id: str) -> list[Command]:
        return [("HGETALL", keys.MODEL_VERSIONS),
                ("ZRANGE", keys.co_view(item_id), 0, self.similar_n - 1, "REV", "WITHSCORES")]

    def item_lists(self, item_id: str) -> tuple[Lists, Lists, dict[str, str]]:
        """Co-view set and KNN list of one item (two round trips: the version picks the key)."""
        raw_versions, coview = self._run("similar_lists", self._similar_commands(item_id))
        versions = _hash(raw_versions)
        knn: Lists = ([], np.zeros(0))
        if ITEM2VEC in versions:
            raw = self._run("similar_knn", [("GET", keys.item_knn(item_id,
                                                                   versions[ITEM2VEC]))])[0]
            knn = neighbours.decode(raw, self.similar_n)
        return zset_pairs(coview), knn, versions

    async def item_lists_async(self, item_id: str) -> tuple[Lists, Lists, dict[str, str]]:
        raw_versions, coview = await self._run_async("similar_lists",
                                                     self._similar_commands(item_id))
        versions = _hash(raw_versions)
        knn: Lists = ([], np.zeros(0))
        if ITEM2VEC in versions:
            raw = (await self._run_async("similar_knn", [
                ("GET", keys.item_knn(item_id, versions[ITEM2VEC]))]))[0]
            knn = neighbours.decode(raw, self.similar_n)
        return zset_pairs(coview), knn, versions

    # -- cache writes ----------------------------------------------------------------------

    def queue_cache_write(self, user_id: str, variant: str, value: bytes,
                          ttl_s: int | None) -> bool:
        """Queue a cache entry, expiring in `ttl_s` (None: replacing an entry that still
        exists, keeping its expiry); True when the queue was empty (the caller schedules a
        flush)."""
        key = keys.reco_cache(user_id, variant)
        command = ("SET", key, value, "XX", "KEEPTTL") if ttl_s is None else (
            "SET", key, value, "EX", ttl_s)
        with self._pending_lock:
            self._pending.append(command)
            return len(self._pending) == 1

    def flush_cache_writes(self) -> None:
        writes = self._take_pending()
        with contextlib.suppress(StoreUnavailable):  # a lost write only costs a later miss
            self._run("reco_cache_write", writes, len(writes))

    async def flush_cache_writes_async(self) -> None:
        writes = self._take_pending()
        if writes:
            with contextlib.suppress(StoreUnavailable):
                await self._run_async("reco_cache_write", writes, len(writes))

    def _take_pending(self) -> list[Command]:
        if not self._pending:
            return []
        with self._pending_lock:
            writes, self._pending = self._pending, []
        return writes

    async def ping(self) -> bool:
        """On the event loop: a readiness probe must not block the requests beside it."""
        try:
            return await self.aio.execute([("PING",)]) == ["PONG"]
        except RedisDown:
            return False

    def close(self) -> None:
        self.client.close()
        self.aio.close()


def _hash(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def zset_pairs(reply: list) -> Lists:
    """A raw `ZRANGE ... WITHSCORES` reply -> (ids, scores).

    RESP2 (serving/reco_redis.py) answers [member, score, ...] as str: slicing and one numpy
    parse, no Python loop. RESP3 (redis-py) answers [[member, score], ...] as bytes, float.
    """
    if not reply:
        return [], np.zeros(0)
    if isinstance(reply[0], list):
        return [m.decode() for m, _ in reply], np.array([s for _, s in reply], dtype=np.float64)
    return reply[0::2], np.array(reply[1::2], dtype=np.float64)
