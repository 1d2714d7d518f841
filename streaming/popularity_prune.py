"""Periodic removal of faded members from the popularity sets (global and per category).

The processor only adds to `item:popularity` and `item:popularity:cat:{category}` (ZINCRBY of
forward-decayed scores, reco/features.py), and decay never lowers a stored score: without this,
every id ever seen (retired items, typos, ids a client made up) would stay for good. A member's
value now is its stored score times 2**(-(now - landmark) / half_life); once that is below
`FADED_BELOW_EVENTS` of the lightest event (a view), the member goes. Besides, the top members
the API reads (RECO_POPULAR_SNAPSHOT_SIZE of the global set, RECO_POPULAR_CATEGORY_SNAPSHOT_N of
each category's) are never removed, so a pass leaves what the API reads as it was, even in a
shop whose every item has faded; a removed member that comes back starts again from its new
events, having lost less than a hundredth of a view.

One processor replica prunes at most once per RECO_POPULARITY_PRUNE_S (a SET NX EX key), on its
own connection beside the batch loop. The category sets are listed by
`keys.POPULARITY_CATEGORIES`, which the processor writes with them; a SCAN of the keyspace runs
only once per Redis, for sets written before that list existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

import hiredis

from reco import keys
from reco.features import FeatureParams, forward_decayed
from reco.settings import Settings
from streaming.metrics import POPULARITY_PRUNED
from streaming.redis_pipe import RedisPipe

log = logging.getLogger(__name__)

# A member now worth less than this share of one lightest event (a view at the default weights)
# is noise beside any item viewed today; with a 30-day half-life one view fades to it in ~200
# days, a hundred views in ~400.
FADED_BELOW_EVENTS = 0.01
# Members one script call removes at most: the first pass over a year of made-up ids would
# otherwise hold Redis for seconds in one ZREMRANGEBYSCORE.
CHUNK = 1000
KEYS_PER_ROUND_TRIP = 16  # script calls pipelined together (at most CHUNK members each)
CHECK_S = 60.0  # how often each replica asks for the period key (one SET NX)
SCAN_COUNT = 1000

# One key, atomically: its lowest members, as long as they are below the bound (ARGV[1],
# stored units) and not among its top ARGV[2], at most ARGV[3] of them. Atomic so that a member
# the processor raises meanwhile is never taken for a faded one.
PRUNE_SCRIPT = """
local below = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[1])
local spare = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
local n = math.min(below, spare, tonumber(ARGV[3]))
if n <= 0 then return 0 end
return redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
"""


@dataclass(frozen=True)
class Pruned:
    """Members one pass removed."""

    global_members: int
    category_members: int
    categories: int  # category sets looked at


def faded_bound(params: FeatureParams, now_s: float) -> float | None:
    """The stored score below which a member is now worth less than `FADED_BELOW_EVENTS` of
    the lightest event; None past the landmark's range (no pruning until it is moved)."""
    lightest = min((w for w in params.event_weights.values() if w > 0), default=1.0)
    return forward_decayed(FADED_BELOW_EVENTS * lightest, now_s, params.landmark_s,
                           params.half_life_s)


async def prune_popularity(client: RedisPipe, settings: Settings, now_s: float) -> Pruned | None:
    """One pass over the global and every category set, unless a replica took the period key
    within RECO_POPULARITY_PRUNE_S (None then, as when pruning is off)."""
    period = settings.popularity_prune_s
    if not period:
        return None
    holder = f"{socket.gethostname()}:{os.getpid()}"  # for whoever looks at the key
    taken, = await client.execute(
        [("SET", keys.POPULARITY_PRUNE_LOCK, holder, "NX", "EX", str(period))])
    if taken is None:
        return None
    bound = faded_bound(FeatureParams.from_settings(settings), now_s)
    if bound is None:
        log.warning("popularity not pruned: now is past the landmark's range (move "
                    "RECO_POPULARITY_LANDMARK_S, see reco/features.py)")
        return None
    categories = await _categories(client)
    sets = {keys.category_popularity(c): settings.popular_category_snapshot_n
            for c in categories}
    sets[keys.ITEM_POPULARITY] = settings.popular_snapshot_size
    removed = await _prune_sets(client, sets, bound)
    top = removed.pop(keys.ITEM_POPULARITY)
    result = Pruned(top, sum(removed.values()), len(categories))
    POPULARITY_PRUNED.labels("global").inc(result.global_members)
    POPULARITY_PRUNED.labels("category").inc(result.category_members)
    log.info("pruned faded popularity members: %d global, %d in %d category sets",
             result.global_members, result.category_members, result.categories)
    return result


async def _prune_sets(client: RedisPipe, sets: dict[str, int], bound: float) -> dict[str, int]:
    """Members removed per key; a key whose call removed a whole CHUNK is called again."""
    removed = dict.fromkeys(sets, 0)
    pending, text = list(sets), repr(bound)
    while pending:
        part, pending = pending[:KEYS_PER_ROUND_TRIP], pending[KEYS_PER_ROUND_TRIP:]
        replies = await client.execute(
            [("EVAL", PRUNE_SCRIPT, "1", key, text, str(sets[key]), str(CHUNK)) for key in part],
            check=False)
        for key, count in zip(part, replies, strict=True):
            if isinstance(count, hiredis.ReplyError):  # not a sorted set: skip, prune the rest
                log.warning("%s not pruned: %s", key, count)
                continue
            removed[key] += count
            if count == CHUNK:
                pending.append(key)
    return removed


async def _categories(client: RedisPipe) -> list[str]:
    """The categories with a popularity set: the processor's list, completed once per Redis by
    a SCAN for the sets written before the list existed."""
    scanned, = await client.execute([("EXISTS", keys.POPULARITY_CATEGORIES_SCANNED)])
    if not scanned:
        found = await _scan_categories(client)
        adds = [("SADD", keys.POPULARITY_CATEGORIES, *found)] if found else []
        await client.execute([*adds, ("SET", keys.POPULARITY_CATEGORIES_SCANNED, "1")])
    members, = await client.execute([("SMEMBERS", keys.POPULARITY_CATEGORIES)])
    return sorted(m.decode() for m in members)


async def _scan_categories(client: RedisPipe) -> list[str]:
    prefix = keys.POPULARITY_CATEGORY_PATTERN.removesuffix("*")
    found: list[str] = []
    cursor: bytes = b"0"
    while True:
        cursor, batch = (await client.execute(
            [("SCAN", cursor, "MATCH", keys.POPULARITY_CATEGORY_PATTERN, "COUNT",
              str(SCAN_COUNT), "TYPE", "zset")]))[0]
        found += [k.decode().removeprefix(prefix) for k in batch]
        if cursor == b"0":
            return found


async def prune_periodically(settings: Settings, stop: asyncio.Event) -> None:
    """Ask for a pass every CHECK_S until `stop` is set. A failed pass is logged; the next
    period (or check, if the key was not taken) tries again."""
    period = settings.popularity_prune_s
    if not period:
        return
    for kind in ("global", "category"):
        POPULARITY_PRUNED.labels(kind)  # exported at 0 from the start
    client = RedisPipe(settings.redis_url, timeout_s=settings.processor_redis_timeout_s)
    try:
        while not stop.is_set():
            try:
                await prune_popularity(client, settings, time.time())
            except Exception as exc:  # noqa: BLE001 - a store error must not stop the processor
                log.warning("popularity prune failed (%r); tried again within %d s", exc, period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(CHECK_S, period))
    finally:
        await client.close()
