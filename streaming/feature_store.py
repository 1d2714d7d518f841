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

from reco import keys
from reco.events import Event
from reco.features import FeatureParams, FeatureUpdates, RecentItems, plan_batch
from reco.settings import Settings
from streaming.redis_pipe import Command, RedisPipe

TRENDING_TTL_MARGIN_S = 120
CATEGORY_CACHE_S = 60.0  # catalogue categories rarely change; a minute of staleness is fine
CATEGORY_CACHE_MAX = 200_000


@dataclass
class AppliedBatch:
    applied: list[Event]
    duplicates: int
    unscored: int


@dataclass
class PlannedBatch:
    """A batch's fresh events and the Redis commands that apply them, not yet written."""

    fresh: list[Event]
    duplicates: int
    updates: FeatureUpdates
    commands: list[Command]

    @property
    def result(self) -> AppliedBatch:
        return AppliedBatch(self.fresh, self.duplicates, self.updates.unscored)


class FeatureStore:
    def __init__(self, client: RedisPipe, settings: Settings,
                 writer: RedisPipe | None = None) -> None:
        self.redis = client
        self.writer = writer or client  # a second connection lets a write overlap a read
        self.settings = settings
        self.params = FeatureParams.from_settings(settings)
        self._categories: dict[str, tuple[str | None, float]] = {}  # item -> (category, expiry)

    async def apply(self, events: Sequence[Event]) -> AppliedBatch:
        planned = await self.plan(events)
        if planned.commands:
            await self.write(planned)
        return planned.result

    async def plan(self, events: Sequence[Event],
                   after: PlannedBatch | None = None) -> PlannedBatch:
        """Read the state the batch needs and compute its writes.

        `after` is a planned batch whose write may still be in flight: its users' recent
        items and its event ids are taken from it instead of Redis (one partition, hence
        this process, owns each user, so nothing else changes them meanwhile)."""
        unique = _first_copies(events)
        carried: dict[str, RecentItems] = {}
        if after is not None and after.fresh:
            written = {e.event_id for e in after.fresh}
            unique = [e for e in unique if e.event_id not in written]
            carried = after.updates.recent
        seen, recent, categories = await self._read_state(unique, carried)
        fresh = [e for e, was_seen in zip(unique, seen, strict=True) if not was_seen]
        if not fresh:
            return PlannedBatch([], len(events), FeatureUpdates(), [])
        now = time.time()
        updates = plan_batch(fresh, recent, categories, self.params, now)
        return PlannedBatch(fresh, len(events) - len(fresh), updates,
                            self._commands(fresh, updates))

    async def write(self, planned: PlannedBatch) -> None:
        await self.writer.execute(planned.commands, transaction=True)

    async def _read_state(
        self, events: Sequence[Event], carried: dict[str, RecentItems]
    ) -> tuple[list[bool], dict[str, RecentItems], dict[str, str | None]]:
        users = [u for u in dict.fromkeys(e.user_id for e in events) if u not in carried]
        now = time.monotonic()
        cached = self._categories
        unknown = [i for i in dict.fromkeys(e.item_id for e in events)
                   if cached.get(i, (None, 0.0))[1] <= now]
        commands: list[Command] = [("EXISTS", _marker(e)) for e in events]
        for user in users:
            commands.append(("LRANGE", keys.user_recent(user), 0, -1))
            commands.append(("HGETALL", keys.user_recent_times(user)))
        commands += [("HGET", keys.item_meta(item), "category") for item in unknown]
        replies = await self.redis.execute(commands)

        n = len(events)
        seen = [bool(x) for x in replies[:n]]
        recent = {e.user_id: carried[e.user_id] for e in events if e.user_id in carried}
        for i, user in enumerate(users):
            listed, flat = replies[n + 2 * i], replies[n + 2 * i + 1]
            times = {flat[j].decode(): float(flat[j + 1]) for j in range(0, len(flat), 2)}
            recent[user] = RecentItems([x.decode() for x in listed], times)
        offset = n + 2 * len(users)
        fetched = {item: (replies[offset + i] or b"").decode() or None
                   for i, item in enumerate(unknown)}
        categories = {e.item_id: fetched[e.item_id] if e.item_id in fetched
                      else cached[e.item_id][0] for e in events}
        if len(cached) + len(fetched) > CATEGORY_CACHE_MAX:
            cached.clear()
        cached.update((item, (cat, now + CATEGORY_CACHE_S)) for item, cat in fetched.items())
        return seen, recent, categories

    def _commands(self, events: Sequence[Event], up: FeatureUpdates) -> list[Command]:
        s = self.settings
        cmds: list[Command] = []
        add = cmds.append
        for user, state in up.recent.items():
            # The batch's final state replaces the old one inside the transaction (single writer).
            recent_key, times_key = keys.user_recent(user), keys.user_recent_times(user)
            add(("DEL", recent_key))
            add(("RPUSH", recent_key, *state.items))
            add(("EXPIRE", recent_key, s.recent_ttl_s))
            add(("DEL", times_key))
            fields = [x for item, t in state.times.items() for x in (item, repr(t))]
            add(("HSET", times_key, *fields))
            add(("EXPIRE", times_key, s.recent_ttl_s))
        for item, score in up.popularity.items():
            add(("ZINCRBY", keys.ITEM_POPULARITY, repr(score), item))
        for category, scores in up.category_popularity.items():
            key = keys.category_popularity(category)
            for item, score in scores.items():
                add(("ZINCRBY", key, repr(score), item))
        for bucket, counts in up.trending.items():
            key = keys.trending_bucket(bucket)
            for item, count in counts.items():
                add(("ZINCRBY", key, repr(count), item))
            add(("EXPIREAT", key, bucket + s.trending_window_s + s.trending_bucket_s
                 + TRENDING_TTL_MARGIN_S))
        for item, partners in up.coview.items():
            key = keys.co_view(item)
            for other, count in partners.items():
                add(("ZINCRBY", key, repr(count), other))
            add(("ZREMRANGEBYRANK", key, 0, -(s.coview_max + 1)))  # keep the coview_max best
            add(("EXPIRE", key, s.coview_ttl_s))
        for user, items in _items_by_user(events).items():
            add(("SADD", keys.user_seen(user), *items))
            add(("EXPIRE", keys.user_seen(user), s.seen_ttl_s))
        for e in events:
            add(("SET", _marker(e), 1, "EX", s.dedup_ttl_s))
        return cmds


def _items_by_user(events: Sequence[Event]) -> dict[str, set[str]]:
    by_user: dict[str, set[str]] = {}
    for e in events:
        by_user.setdefault(e.user_id, set()).add(e.item_id)
    return by_user


def _marker(event: Event) -> str:
    return keys.event_seen(str(event.event_id))


def _first_copies(events: Sequence[Event]) -> list[Event]:
    """The events in order, without later copies of an id (a redelivery inside one batch)."""
    seen: set[object] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out
