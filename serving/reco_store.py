"""Feature reads of the recommendation API: at most two pipelined Redis round trips per request.

Round 1 (user keys + one global hash): cached response, recent list, active model versions.
Round 2 (only on a cache miss): the recent items' last-touch times and, per source item, its
co-view set, KNN list, ALS item neighbours, plus the user's ALS candidates. Every command names
one user or one item, so the layout works on Redis Cluster.

The sync client (hiredis parser) is called directly from the event loop: on loopback a round
trip is ~0.1 ms, cheaper than a thread hop, and the measured redis.asyncio overhead dominated
request time. Short timeouts plus a breaker keep a sick store from stalling the loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from reco import keys, neighbours
from reco.ranking import Lists, UserFeatures

log = logging.getLogger(__name__)
ITEM2VEC, ALS = "item2vec", "als"


class StoreUnavailable(Exception):
    """Redis is unreachable or timing out; callers serve the fallback."""


@dataclass(frozen=True)
class FirstRead:
    cached: bytes | None
    recent: list[str]
    versions: dict[str, str]


class FeatureStore:
    """The API's Redis reads and its cache writes, behind a small circuit breaker."""

    def __init__(self, url: str, timeout_s: float = 0.25, retry_s: float = 1.0) -> None:
        self.client = redis.Redis.from_url(url, protocol=3, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self.retry_s = retry_s
        self._down_until = 0.0

    def _run(self, pipe: redis.client.Pipeline) -> list:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("feature store marked down")
        try:
            return pipe.execute()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self.retry_s
            log.warning("feature store unavailable, serving fallback for %.1fs: %s",
                        self.retry_s, exc)
            raise StoreUnavailable(str(exc)) from exc

    def first_read(self, user_id: str, variant: str) -> FirstRead:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.reco_cache(user_id, variant))
        pipe.lrange(keys.user_recent(user_id), 0, -1)
        pipe.hgetall(keys.MODEL_VERSIONS)
        cached, recent, versions = self._run(pipe)
        return FirstRead(cached, [i.decode() for i in recent],
                         {m.decode(): v.decode() for m, v in versions.items()})

    def user_features(self, user_id: str, recent: list[str], sources: Sequence[str],
                      versions: dict[str, str], neighbours_n: int,
                      with_item_cf: bool) -> UserFeatures:
        """Round 2: everything `rank` needs about this user and their source items."""
        knn_v, als_v = versions.get(ITEM2VEC), versions.get(ALS)
        pipe = self.client.pipeline(transaction=False)
        if sources:
            pipe.hmget(keys.user_recent_times(user_id), list(sources))
        for item in sources:
            # Raw ZRANGE (no withscores option): no per-member Python callback in redis-py.
            pipe.execute_command("ZRANGE", keys.co_view(item), 0, neighbours_n - 1, "REV",
                                 "WITHSCORES")
            if knn_v:
                pipe.get(keys.item_knn(item, knn_v))
            if als_v and with_item_cf:
                pipe.get(keys.item_cf_neighbours(item, als_v))
        if als_v:
            pipe.get(keys.user_cf(user_id, als_v))
        replies = iter(self._run(pipe)) if len(pipe) else iter(())

        features = UserFeatures(recent, {}, time.time())
        if sources:
            times = next(replies)
            features.recent_times = {s: float(t) for s, t in zip(sources, times, strict=True)
                                     if t is not None}
        for item in sources:
            features.coview[item] = zset_pairs(next(replies))
            if knn_v:
                features.knn[item] = neighbours.decode(next(replies), neighbours_n)
            if als_v and with_item_cf:
                features.item_cf[item] = neighbours.decode(next(replies), neighbours_n)
        if als_v:
            features.user_cf = neighbours.decode(next(replies))
        return features

    def item_lists(self, item_id: str, neighbours_n: int) -> tuple[Lists, Lists, dict[str, str]]:
        """Co-view set and KNN list of one item (two round trips: the version picks the key)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.MODEL_VERSIONS)
        pipe.execute_command("ZRANGE", keys.co_view(item_id), 0, neighbours_n - 1, "REV",
                             "WITHSCORES")
        raw_versions, coview = self._run(pipe)
        versions = {m.decode(): v.decode() for m, v in raw_versions.items()}
        knn: Lists = ([], np.zeros(0))
        if ITEM2VEC in versions:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(keys.item_knn(item_id, versions[ITEM2VEC]))
            knn = neighbours.decode(self._run(pipe)[0], neighbours_n)
        return zset_pairs(coview), knn, versions

    def write_cache(self, user_id: str, variant: str, value: bytes, ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.reco_cache(user_id, variant), value, ex=ttl_s)
        with contextlib.suppress(StoreUnavailable):  # a lost write only costs a later miss
            self._run(pipe)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()


def zset_pairs(reply: list) -> Lists:
    """A raw `ZRANGE ... WITHSCORES` reply -> (ids, scores).

    RESP3 (the client here) answers [[member, score], ...] with scores already parsed as
    doubles by hiredis; RESP2 answers [member, score, ...] with scores as bytes.
    """
    if not reply:
        return [], np.zeros(0)
    if isinstance(reply[0], list):
        return [m.decode() for m, _ in reply], np.array([s for _, s in reply], dtype=np.float64)
    return [m.decode() for m in reply[0::2]], np.array(reply[1::2], dtype=np.float64)
