"""Redis I/O of the feature processor: read the state a batch needs, write its updates atomically.

Exactly-once on a single Redis: `apply` first reads which events already carry a `event:seen`
marker, then writes the new events' feature updates and their markers in ONE MULTI/EXEC, so a
crash leaves either both or neither. One partition (hence one consumer) owns each user, so the
read-then-write of a user's recent list has a single writer. Every command names one key (one
user, one item or one global set); on Redis Cluster the transaction would have to be split per
hash slot, giving per-slot rather than per-batch atomicity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aredis

from reco import keys
from reco.events import Event
from reco.features import FeatureParams, FeatureUpdates, RecentItems, plan_batch
from reco.settings import Settings

TRENDING_TTL_MARGIN_S = 120


@dataclass
class AppliedBatch:
    applied: list[Event]
    duplicates: int
    unscored: int


class FeatureStore:
    def __init__(self, client: aredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.params = FeatureParams.from_settings(settings)

    async def apply(self, events: Sequence[Event]) -> AppliedBatch:
        ids: set = set()
        unique = [e for e in events if not (e.event_id in ids or ids.add(e.event_id))]
        seen, recent, categories = await self._read_state(unique)
        fresh = [e for e, was_seen in zip(unique, seen, strict=True) if not was_seen]
        if not fresh:
            return AppliedBatch([], len(events), 0)
        now = time.time()
        updates = plan_batch(fresh, recent, categories, self.params, now)
        await self._write(fresh, updates, now)
        return AppliedBatch(fresh, len(events) - len(fresh), updates.unscored)

    async def _read_state(
        self, events: Sequence[Event]
    ) -> tuple[list[bool], dict[str, RecentItems], dict[str, str | None]]:
        users = list(dict.fromkeys(e.user_id for e in events))
        items = list(dict.fromkeys(e.item_id for e in events))
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            pipe.exists(keys.event_seen(str(e.event_id)))
        for user in users:
            pipe.lrange(keys.user_recent(user), 0, -1)
            pipe.hgetall(keys.user_recent_times(user))
        for item in items:
            pipe.hget(keys.item_meta(item), "category")
        replies = await pipe.execute()

        n = len(events)
        seen = [bool(x) for x in replies[:n]]
        recent = {}
        for i, user in enumerate(users):
            listed, times = replies[n + 2 * i], replies[n + 2 * i + 1]
            recent[user] = RecentItems(
                [_text(x) for x in listed], {_text(k): float(v) for k, v in times.items()})
        offset = n + 2 * len(users)
        categories = {item: _text_or_none(replies[offset + i]) for i, item in enumerate(items)}
        return seen, recent, categories

    async def _write(self, events: Sequence[Event], up: FeatureUpdates, now: float) -> None:
        s = self.settings
        pipe = self.redis.pipeline(transaction=True)
        for user, state in up.recent.items():
            # The batch's final state replaces the old one inside the transaction (single writer).
            recent_key, times_key = keys.user_recent(user), keys.user_recent_times(user)
            pipe.delete(recent_key)
            pipe.rpush(recent_key, *state.items)
            pipe.expire(recent_key, s.recent_ttl_s)
            pipe.delete(times_key)
            pipe.hset(times_key, mapping={k: repr(v) for k, v in state.times.items()})
            pipe.expire(times_key, s.recent_ttl_s)
        for item, score in up.popularity.items():
            pipe.zincrby(keys.ITEM_POPULARITY, score, item)
        for category, scores in up.category_popularity.items():
            key = keys.category_popularity(category)
            for item, score in scores.items():
                pipe.zincrby(key, score, item)
        for bucket, counts in up.trending.items():
            key = keys.trending_bucket(bucket)
            for item, count in counts.items():
                pipe.zincrby(key, count, item)
            pipe.expireat(key, bucket + s.trending_window_s + s.trending_bucket_s
                          + TRENDING_TTL_MARGIN_S)
        for item, partners in up.coview.items():
            key = keys.co_view(item)
            for other, count in partners.items():
                pipe.zincrby(key, count, other)
            pipe.zremrangebyrank(key, 0, -(s.coview_max + 1))  # keep the coview_max strongest
            pipe.expire(key, s.coview_ttl_s)
        for e in events:
            pipe.set(keys.event_seen(str(e.event_id)), 1, ex=s.dedup_ttl_s)
        await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text_or_none(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)
