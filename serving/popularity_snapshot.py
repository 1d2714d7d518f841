"""The popularity snapshot read on the event loop, in slices, onto the catalogue's rows.

The top `popular_snapshot_size` members of `item:popularity` are read in slices of `CHUNK`
members (one read, parse and id -> row mapping each: ~2 ms here with 500 members, so now
250), so requests wait at most one slice. It used to run in a thread in one piece: reading,
parsing and mapping 20,000 members held the GIL for 40-100 ms every 5 s (hiredis and numpy do
not release it), which stalled every request arriving meanwhile and made the p99 of cache
hits at 200 req/s ~20 ms. The top items of the categories requests asked for follow, in
slices of about `CHUNK` members too (a category per round trip at the default 200 items each).
A member of both keeps its global score: its first sighting counts, and later ones are
dropped as each slice is mapped, so the merge at the end (`index`) has no duplicates to sort
out. Read in one pipeline, mapped in one piece and deduplicated by a sort in the merge, 64
categories held the loop ~22 ms and 200 ~46-57 ms (benchmarks/reports/category_refresh.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import redis

from reco import keys
from reco.catalog import ItemIndex
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import RedisDown
from serving.reco_store import zset_pairs

CHUNK = 250  # popularity members per slice of the on-loop refresh (~1 ms each, measured)


class PopularReads:
    """Popular members read so far, mapped to rows of the catalogue `base`."""

    def __init__(self, base: ItemIndex) -> None:
        self.base = base
        self.ids: list[str] = []
        self.rows: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.seen = np.zeros(len(base.ids) + 1, dtype=bool)  # rows read so far

    async def read_top(self, aio: AsyncPipelineClient, size: int) -> None:
        """The top `size` of `item:popularity`, a slice per round trip."""
        for lo in range(0, size, CHUNK):
            try:
                flat = (await aio.execute([("ZRANGE", keys.ITEM_POPULARITY, lo,
                                            min(size, lo + CHUNK) - 1, "REV",
                                            "WITHSCORES")]))[0]
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            if self._add(flat) < CHUNK:
                break

    async def read_categories(self, aio: AsyncPipelineClient, reads: list[tuple], n: int
                              ) -> None:
        """The asked categories' top items (`reads`: their ZRANGE commands of `n` members
        each), a slice of about `CHUNK` members (at least one category) per round trip."""
        step = max(1, CHUNK // n)
        for lo in range(0, len(reads), step):
            try:
                by_category = await aio.execute(reads[lo:lo + step])
            except RedisDown as exc:
                raise redis.ConnectionError(str(exc)) from exc
            for flat in by_category:
                self._add(flat)

    def _add(self, flat: list) -> int:
        """Parse and map one reply's members, keeping first sightings; returns how many it
        held."""
        part_ids, part_scores = zset_pairs(flat)
        held = len(part_ids)
        rows = self.base.rows(part_ids)
        # Ids the catalogue lacks share `unknown_row`: kept, `with_popularity` tells them apart.
        new = ~self.seen[rows] | (rows == self.base.unknown_row)
        if not new.all():
            keep = np.flatnonzero(new)
            part_ids = [part_ids[j] for j in keep.tolist()]
            rows, part_scores = rows[keep], part_scores[keep]
        self.seen[rows] = True
        self.ids += part_ids
        self.rows.append(rows)
        self.scores.append(part_scores)
        return held

    def index(self) -> ItemIndex:
        """`base` with this popularity snapshot."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        if (rows == self.base.unknown_row).any():
            # Popular items the catalogue lacks get rows appended (rare after the first time).
            return self.base.with_popularity(self.ids, scores)
        return with_popular_rows(self.base, rows, scores)


def with_popular_rows(base: ItemIndex, rows: np.ndarray, scores: np.ndarray) -> ItemIndex:
    """`base.with_popularity` for members already mapped to known rows, each row once (a
    member read twice, in two chunks or in the global top and a category, is dropped at its
    later sightings by `PopularReads._add`)."""
    pop = np.zeros(len(base.ids) + 1)
    pop[rows] = scores
    popular = rows[np.argsort(-scores, kind="stable")]
    # _filler is the popular-filler cache of one popularity snapshot: never share it.
    return dataclasses.replace(base, popularity=pop, popular_rows=popular[pop[popular] > 0],
                               _filler={})


def popular_ids(items: ItemIndex) -> list[str]:
    """Ids of a snapshot's popular items, most popular first."""
    ids = items.ids
    return [ids[r] for r in items.popular_rows.tolist()]
