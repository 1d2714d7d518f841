"""Redis I/O of the feature processor: read the state a batch needs, write its updates atomically.

Exactly-once on a single Redis: `apply` first reads which events were applied already (each
partition's applied position, streaming/applied_positions.py, and the `event:seen` markers of
events sent twice), then writes the new events' feature updates, their markers and the
partitions' new positions in ONE MULTI/EXEC, so a crash leaves either all or none. The write
WATCHes the markers and positions and checks them again first: after a rebalance two processors
can hold the same batch, and whichever writes second finds the other's markers or position (or
has its EXEC aborted) and plans again, so no event counts twice. One partition (hence one
consumer) owns each user, so the read-then-write of a user's recent list has a single writer.
Every command names one key (one user, one item, one partition or one global set); on Redis
Cluster the transaction would have to be split per hash slot, giving per-slot rather than
per-batch atomicity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import hiredis

from reco import keys
from reco.features import FeatureParams, FeatureUpdates, RecentItems, plan_batch
from reco.privacy import pseudonym
from reco.settings import Settings
from streaming.applied_positions import LogEnd, Position, find_replays, spans_of
from streaming.messages import StreamErasure, StreamEvent
from streaming.redis_pipe import Packed, RedisPipe, TransactionAborted, raise_first_error

log = logging.getLogger(__name__)

TRENDING_TTL_MARGIN_S = 120
CATEGORY_CACHE_S = 60.0  # catalogue categories rarely change; a minute of staleness is fine
CATEGORY_CACHE_MAX = 200_000
# Plans of one batch before giving up (the batch loop then retries it with backoff). Each
# conflict means another processor applied events of the batch's partitions, so a re-plan
# finds them applied.
WRITE_ATTEMPTS = 5


class WriteConflict(Exception):
    """Another processor applied events of a planned batch, or moved the position of one of
    its partitions, meanwhile."""


@dataclass
class AppliedBatch:
    applied: list[StreamEvent]
    duplicates: int
    unscored: int
    erased: list[StreamErasure] = field(default_factory=list)


@dataclass
class PlannedBatch:
    """A batch's fresh events and the Redis commands that apply them, not yet written."""

    fresh: list[StreamEvent]
    duplicates: int
    erased: list[StreamErasure]  # the batch's erasures not applied before
    dropped: list[StreamEvent]  # fresh events before an erasure of their user: never applied
    # The model versions (serving, publishing) whose users' lists they erase; None: no erasure.
    versions: Versions | None
    updates: FeatureUpdates
    commands: Packed
    # Partition -> its applied position before the batch (as read or carried; None: none yet),
    # and once it is written.
    positions_before: dict[int, Position | None]
    positions: dict[int, Position]

    @property
    def result(self) -> AppliedBatch:
        return AppliedBatch(self.fresh, self.duplicates, self.updates.unscored, self.erased)


class FeatureStore:
    def __init__(self, client: RedisPipe, settings: Settings,
                 writer: RedisPipe | None = None, log_end: LogEnd = lambda _: None) -> None:
        self.redis = client
        self.writer = writer or client  # a second connection lets a write overlap a read
        self.settings = settings
        self.topic = settings.topic_events
        self.log_end = log_end  # the consumer's view of each partition's log end
        self.params = FeatureParams.from_settings(settings)
        self._key = settings.log_pseudonym_key.get_secret_value()  # erased users' pseudonyms
        # How long erasures, and the events they drop, stay marked: as their record lasts.
        self._erasure_mark_s = max(keys.USER_ERASURES_KEEP_MS // 1000, settings.dedup_ttl_s)
        self._categories: dict[str, tuple[str | None, float]] = {}  # item -> (category, expiry)

    async def apply(self, events: Sequence[StreamEvent],
                    erasures: Sequence[StreamErasure] = ()) -> AppliedBatch:
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                return await self._apply_once(events, erasures)
            except WriteConflict:
                continue  # markers appeared since the plan: plan again without those events
        return await self._apply_once(events, erasures)

    async def _apply_once(self, events: Sequence[StreamEvent],
                          erasures: Sequence[StreamErasure]) -> AppliedBatch:
        planned = await self.plan(events, erasures=erasures)
        if planned.commands:
            await self.write(planned)
        return planned.result

    async def plan(self, events: Sequence[StreamEvent], after: PlannedBatch | None = None,
                   erasures: Sequence[StreamErasure] = ()) -> PlannedBatch:
        """Read the state the batch needs and compute its writes.

        `after` is a planned batch whose write may still be in flight: its users' recent
        items, event ids and partition positions are taken from it instead of Redis (one
        partition, hence this process, owns each user, so nothing else changes them
        meanwhile).

        An erasure deletes its user's keys before the batch's writes, and the user's events
        before it in the batch are dropped: the user's state starts afresh from the events
        after it. Positions and markers recognise an erasure applied before, as they do
        events."""
        firsts = _first_copies(events)
        positioned = [*events, *erasures]
        spans = spans_of(positioned)
        carried: dict[str, RecentItems] = {}
        before: dict[int, Position | None] = {}
        if after is not None:
            if after.fresh or after.dropped:
                written = {e.event_id for e in (*after.fresh, *after.dropped)}
                firsts = [j for j in firsts if events[j].event_id not in written]
            # A user it erases starts empty (unless its later events gave a state): Redis may
            # still hold the old state, its DEL not written yet.
            carried = {**{x.user_id: RecentItems() for x in after.erased},
                       **after.updates.recent}
            before = {p: after.positions[p] for p in spans if p in after.positions}
        seen, recent, categories, stored = await self._read_state(
            [events[j] for j in firsts], carried, [p for p in spans if p not in before])
        before.update(stored)
        replays = find_replays(positioned, spans, before, self.log_end, self.topic)
        if replays.applied:
            log.info("%s: %d of %d records were applied before (below their partition's "
                     "applied offset): skipped", self.topic, len(replays.applied),
                     len(positioned))
        n = len(events)
        erased, redelivered, versions = await self._erasure_state(
            [x for i, x in enumerate(erasures) if n + i not in replays.applied])
        # The user's last erasure of the batch: one takes all before it. One applied before,
        # met again at its own position, still drops them (it dropped them then), erasing
        # nothing: what Redis holds of the user came after it.
        erasing = {x.user_id: x for x in erased}
        dropping = {x.user_id: x for x in sorted((*erased, *redelivered),
                                                 key=lambda x: (x.partition, x.offset))}
        fresh = [events[j] for j, was_seen in zip(firsts, seen, strict=True)
                 if not was_seen and j not in replays.applied]
        def is_dropped(e: StreamEvent) -> bool:
            return e.user_id in dropping and dropping[e.user_id].precedes(e)

        dropped = [e for e in fresh if is_dropped(e)]
        if dropped:
            fresh = [e for e in fresh if not is_dropped(e)]
        recent.update((user, RecentItems()) for user in erasing)
        updates = (plan_batch(fresh, recent, categories, self.params, time.time()) if fresh
                   else FeatureUpdates())
        commands = Packed()
        if erased:  # first: the batch's later events of the user write afresh
            self._erasure_commands(commands, erased, erasing, versions or ({}, {}))
        # As long as the erasure's record: a redelivery that positions cannot place must not
        # apply them once their own markers' RECO_DEDUP_TTL_S has passed.
        if dropped:
            commands.each("SET", [_marker(e) for e in dropped], "1", "EX",
                          str(self._erasure_mark_s))
        self._commands(commands, fresh, updates, replays.positions)
        return PlannedBatch(fresh, len(events) - len(fresh) - len(dropped), erased, dropped,
                            versions, updates, commands, before, replays.positions)

    async def _erasure_state(self, erasures: Sequence[StreamErasure]
                             ) -> tuple[list[StreamErasure], list[StreamErasure],
                                        Versions | None]:
        """The erasures without a marker (not applied before; the same erasure twice in the
        batch counts once, at its first copy), those whose marker names their own position
        (applied before: a redelivery; elsewhere, it is a copy sent again, which drops
        nothing), and the model versions, serving and being published, whose users' lists
        the first delete (None without erasures)."""
        distinct: dict[str, StreamErasure] = {}
        for x in erasures:
            distinct.setdefault(x.erasure_id, x)
        if not distinct:
            return [], [], None
        check = Packed()
        check.each("GET", [keys.event_seen(x) for x in distinct])
        check.each("HGETALL", list(VERSION_HASHES))
        replies = await self.redis.execute(check)
        marks = dict(zip(distinct.values(), replies[:len(distinct)], strict=True))
        return ([x for x, mark in marks.items() if mark is None],
                [x for x, mark in marks.items() if mark == keys.erasure_mark(x.partition,
                                                                              x.offset)],
                _versions(replies[len(distinct):]))

    def _erasure_commands(self, cmds: Packed, erased: Sequence[StreamErasure],
                          erasing: Mapping[str, StreamErasure], versions: Versions) -> None:
        """Delete the erased users' keys; their latest event becomes the erasure (a cached
        answer's fingerprint then differs, whatever it held); record them for publishing
        (`keys.USER_ERASURES`); mark the erasures applied, each with its position."""
        s = self.settings
        lists = [pair for hash_ in versions for pair in hash_.items()]
        cmds.add("DEL", *[key for user in erasing for key in keys.user_erasable(user, lists)])
        for user, x in erasing.items():
            cmds.add("SET", keys.user_last_event(user), x.erasure_id, "EX", str(s.recent_ttl_s))
        now_ms = int(time.time() * 1000)
        cmds.variadic("ZADD", keys.USER_ERASURES, [
            part for user, x in erasing.items()
            for part in (str(now_ms), keys.user_erasure_member(pseudonym(user, self._key),
                                                               x.erasure_id))])
        cmds.add("ZREMRANGEBYSCORE", keys.USER_ERASURES, "-inf",
                 str(now_ms - keys.USER_ERASURES_KEEP_MS))
        # As long as the record: a redelivery that positions cannot place, or a copy sent
        # again, must not erase what came after.
        for x in erased:
            cmds.add("SET", keys.event_seen(x.erasure_id),
                     keys.erasure_mark(x.partition, x.offset).decode(), "EX",
                     self._erasure_mark_s)

    async def write(self, planned: PlannedBatch) -> None:
        """Apply the plan atomically, unless one of its events got a marker, or one of its
        partitions another position, since it was planned (WriteConflict: plan again). WATCH
        first, so a change after the check aborts EXEC."""
        markers = [_marker(e) for e in planned.fresh]
        markers += [keys.event_seen(x.erasure_id) for x in planned.erased]
        partitions = list(planned.positions_before)
        position_keys = [keys.applied_position(self.topic, p) for p in partitions]
        # An erasure deletes the lists of the versions it read: a publish starting or switching
        # since then must make it plan again, or that version's lists of the user would stay.
        versions_keys = list(VERSION_HASHES) if planned.versions is not None else []
        check = Packed()
        check.add("WATCH", *markers, *position_keys, *versions_keys)
        check.each("GET", position_keys)
        check.each("HGETALL", versions_keys)
        if markers:
            check.add("EXISTS", *markers)
        async with self.writer.watching():
            replies = await self.writer.execute(check)
            now = replies[1:1 + len(partitions)]
            moved = any(Position.parse(raw) != planned.positions_before[p]
                        for p, raw in zip(partitions, now, strict=True))
            at = 1 + len(partitions)
            switched = bool(versions_keys) and (
                _versions(replies[at:at + len(versions_keys)]) != planned.versions)
            marked = bool(markers) and bool(replies[-1])
            if marked or moved or switched:
                await self.writer.execute([("UNWATCH",)])
                raise WriteConflict("events of the batch were applied meanwhile (before the "
                                    "write)")
            try:
                await self.writer.execute(planned.commands, transaction=True)
            except TransactionAborted:
                raise WriteConflict("events of the batch were applied meanwhile (EXEC "
                                    "aborted)") from None

    async def _read_state(
        self, events: Sequence[StreamEvent], carried: dict[str, RecentItems],
        partitions: list[int],
    ) -> tuple[list[bool], dict[str, RecentItems], dict[str, str | None],
               dict[int, Position | None]]:
        users = [u for u in dict.fromkeys(e.user_id for e in events) if u not in carried]
        now = time.monotonic()
        cached = self._categories
        unknown = [i for i in dict.fromkeys(e.item_id for e in events)
                   if cached.get(i, (None, 0.0))[1] <= now]
        commands = Packed()
        commands.each("EXISTS", [_marker(e) for e in events])
        commands.each("LRANGE", [keys.user_recent(user) for user in users], "0", "-1")
        commands.each("HGETALL", [keys.user_recent_times(user) for user in users])
        commands.each("HGET", [keys.item_meta(item) for item in unknown], "category")
        commands.each("GET", [keys.applied_position(self.topic, p) for p in partitions])
        replies = await self.redis.execute(commands, check=False)

        n = len(events)
        offset = n + 2 * len(users)
        category_replies = replies[offset:offset + len(unknown)]
        raise_first_error(replies[:offset] + replies[offset + len(unknown):])
        seen = [bool(x) for x in replies[:n]]
        recent = {e.user_id: carried[e.user_id] for e in events if e.user_id in carried}
        u = len(users)
        for user, listed, flat in zip(users, replies[n:n + u], replies[n + u:n + 2 * u],
                                      strict=True):
            times = dict(zip(map(bytes.decode, flat[::2]), map(float, flat[1::2]), strict=True))
            recent[user] = RecentItems.loaded(map(bytes.decode, listed), times)
        fetched = dict(zip(unknown, map(_category, unknown, category_replies), strict=True))
        offset += len(unknown)
        positions = {p: Position.parse(replies[offset + i]) for i, p in enumerate(partitions)}
        categories = {e.item_id: fetched[e.item_id] if e.item_id in fetched
                      else cached[e.item_id][0] for e in events}
        if len(cached) + len(fetched) > CATEGORY_CACHE_MAX:
            cached.clear()
        cached.update((item, (cat, now + CATEGORY_CACHE_S)) for item, cat in fetched.items())
        return seen, recent, categories, positions

    def _commands(self, cmds: Packed, events: Sequence[StreamEvent], up: FeatureUpdates,
                  positions: dict[int, Position]) -> None:
        """The batch's writes, added to `cmds`. Commands on one key keep their order; those on
        different keys commute, so runs of one shape (a DEL or EXPIRE per key) are packed
        together. A batch of records all applied before still moves its partitions' positions
        forward."""
        s = self.settings
        for partition, position in positions.items():
            cmds.add("SET", keys.applied_position(self.topic, partition), position.dump())
        if not events:
            return
        # The batch's final state replaces the old one inside the transaction (single writer).
        recent_keys = [keys.user_recent(user) for user in up.recent]
        times_keys = [keys.user_recent_times(user) for user in up.recent]
        cmds.each("DEL", recent_keys)
        cmds.each("DEL", times_keys)
        for key, state in zip(recent_keys, up.recent.values(), strict=True):
            cmds.variadic("RPUSH", key, state.items)
        for key, state in zip(times_keys, up.recent.values(), strict=True):
            times = state.times
            fields = chain.from_iterable(zip(times, map(repr, times.values()), strict=True))
            cmds.variadic("HSET", key, [*fields])
        cmds.each("EXPIRE", recent_keys + times_keys, str(s.recent_ttl_s))
        for user, event_id in {e.user_id: e.event_id for e in events}.items():  # the last one
            cmds.add("SET", keys.user_last_event(user), event_id, "EX", str(s.recent_ttl_s))
        cmds.zincrby(keys.ITEM_POPULARITY, up.popularity)
        for category, scores in up.category_popularity.items():
            cmds.zincrby(keys.category_popularity(category), scores)
        if up.category_popularity:  # with the sets: the prune lists them from here
            cmds.variadic("SADD", keys.POPULARITY_CATEGORIES, list(up.category_popularity))
        for bucket, counts in up.trending.items():
            key = keys.trending_bucket(bucket)
            cmds.zincrby(key, counts)
            cmds.add("EXPIREAT", key, bucket + s.trending_window_s + s.trending_bucket_s
                     + TRENDING_TTL_MARGIN_S)
        coview_keys = [keys.co_view(item) for item in up.coview]
        for key, partners in zip(coview_keys, up.coview.values(), strict=True):
            cmds.zincrby(key, partners)
        cmds.each("ZREMRANGEBYRANK", coview_keys, "0", str(-(s.coview_max + 1)))  # keep the best
        cmds.each("EXPIRE", coview_keys, str(s.coview_ttl_s))
        if s.seen_max:
            touched = _last_touches(events)
            seen_keys = [keys.user_seen(user) for user in touched]
            for key, times in zip(seen_keys, touched.values(), strict=True):
                # GT: a late event never moves an item back in time.
                pairs = chain.from_iterable((str(ms), item) for item, ms in times.items())
                cmds.variadic("ZADD", key, ["GT", *pairs])
            cmds.each("ZREMRANGEBYRANK", seen_keys, "0", str(-(s.seen_max + 1)))  # the newest
            cmds.each("EXPIRE", seen_keys, str(s.seen_ttl_s))
        cmds.each("SET", [_marker(e) for e in events], "1", "EX", str(s.dedup_ttl_s))


def _last_touches(events: Sequence[StreamEvent]) -> dict[str, dict[str, int]]:
    """user -> item -> the latest event time (epoch ms) of the batch."""
    by_user: dict[str, dict[str, int]] = {}
    for e in events:
        times = by_user.setdefault(e.user_id, {})
        if times.get(e.item_id, -1) < e.timestamp:
            times[e.item_id] = e.timestamp
    return by_user


Versions = tuple[dict[str, str], ...]  # model -> version, per hash of VERSION_HASHES
VERSION_HASHES = (keys.MODEL_VERSIONS, keys.MODEL_PUBLISHING)


def _versions(replies: Sequence[list[bytes]]) -> Versions:
    """The VERSION_HASHES from their HGETALL replies."""
    return tuple({k.decode(): v.decode() for k, v in zip(r[::2], r[1::2], strict=True)}
                 for r in replies)


def _marker(event: StreamEvent) -> str:
    return keys.event_seen(event.event_id)


def _first_copies(events: Sequence[StreamEvent]) -> list[int]:
    """Indices of the events, in order, without later copies of an id (a redelivery inside one
    batch)."""
    seen: set[object] = set()
    out = []
    for j, event in enumerate(events):
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(j)
    return out


def _category(item: str, reply: bytes | None | hiredis.ReplyError) -> str | None:
    """An item's category from its HGET reply. An error reply (a key of another type where the
    item's hash would be: releases before 2026-11-28 kept a string counter at
    `item:meta:version`) means no category: raising would stop the partition on every retry."""
    if isinstance(reply, hiredis.ReplyError):
        log.warning("no category for item %r: %s is not its metadata hash (%s)", item,
                    keys.item_meta(item), reply)
        return None
    return (reply or b"").decode() or None
