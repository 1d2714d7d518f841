"""Co-view lists and popularity as of each held-out event, for the blend evaluation.

A user held out at time t is ranked with the features of the training events the processor had
applied before their held-out event (those before it in event order, `reco.event_order`) that
fall in the last `replay_s` seconds (ts >= t - replay_s). The training events are replayed
once, in event order, through the processor's `plan_batch`, cut into chunks at every held-out
event and every window start, so that each user's window is a run of whole chunks: popularity
is forward-decayed (one landmark whatever the chunk) and co-view affinities add up, so the
chunks' sums add up to the window's. Users are visited in event order: each visit adds the
chunks its window reaches and forgets those it left behind.

Popularity over the moving window: a total over the chunks added so far and its twin over the
chunks dropped so far grow by the same additions in the same order, so the twin is exactly an
earlier value of the total. Their difference is exactly 0 for an item without an event in the
window (as in a replay of the window alone) and otherwise the window's sum up to rounding (at
most 2.4e-14 relative on MovieLens-100k, against such a replay); one running sum, added to and
subtracted from, would drift and leave items long gone with crumbs of popularity. Co-view lists
are summed when read: only the ranked users' sources ever are.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque, namedtuple
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reco.catalog import ItemIndex
from reco.event_order import sort_events
from reco.features import FeatureParams, FeatureUpdates, RecentItems, plan_batch
from reco.ranking import Lists

_Event = namedtuple("_Event", "user_id item_id event_type timestamp_s")


@dataclass
class _Chunk:
    """One chunk's increments: popularity by catalogue row, co-view by item and partner."""

    rows: np.ndarray
    scores: np.ndarray
    coview: dict[str, dict[str, float]]


class AsOfFeatures:
    """Co-view lists and popularity at held-out events, visited in event order (`order`)."""

    def __init__(self, events: pd.DataFrame, held_ts: np.ndarray, held_ids: list[str],
                 base: ItemIndex, params: FeatureParams, replay_s: float,
                 coview_max: int) -> None:
        """`events`: the training events (user_id, item_id, event_type, ts, event_id); the
        held-out events by time and event id; `base`: the catalogue, without popularity."""
        ordered = sort_events(events, "ts")
        self.ts = ordered["ts"].to_numpy(np.float64)
        # Plain Python columns: iterating Arrow-backed pandas rows costs more than the replay.
        self.cols = [ordered[c].tolist() for c in ("user_id", "item_id", "event_type", "ts")]
        ids = ordered["event_id"].astype(str).tolist()
        held_ts = np.asarray(held_ts, dtype=np.float64)
        first = np.searchsorted(self.ts, held_ts, "left").tolist()
        after = np.searchsorted(self.ts, held_ts, "right").tolist()
        # Events of the held-out second come before it when their id is smaller (ids are in
        # order within a second): the user's own page, other users' events of that second.
        self.hi = np.array([bisect_left(ids, str(h), a, b)
                            for h, a, b in zip(held_ids, first, after, strict=True)],
                           dtype=np.int64)
        self.lo = np.minimum(np.searchsorted(self.ts, held_ts - replay_s, "left"), self.hi)
        self.order = np.lexsort((self.lo, self.hi))  # event order: both ends only move on
        self.bounds = np.unique(np.concatenate([self.lo, self.hi, [len(self.ts)]]))
        self.base, self.params, self.coview_max = base, params, coview_max
        self.recent: dict[str, RecentItems] = {}
        n = len(base.ids) + 1
        self.upto = np.zeros(n)  # popularity over the chunks added so far
        self.before = np.zeros(n)  # ... over those dropped so far (the twin)
        self.popular = np.zeros(0, dtype=np.int64)  # rows > 0 in the window, best first
        self.changed: list[np.ndarray] = []  # rows added or dropped since the last `at`
        # Co-view item -> its partners' increments per chunk of the window, oldest first.
        self.coview_log: dict[str, deque[dict[str, float]]] = {}
        self.chunks: deque[_Chunk] = deque()
        self.first_chunk = self.next_chunk = 0
        if self.bounds[0] < len(self.ts):
            # Co-view partners are a user's items touched within coview_window_s: a replay from
            # that long before the first window finds them as the processor, which kept every
            # user's recent items, did.
            warm = np.searchsorted(self.ts, self.ts[self.bounds[0]] - params.coview_window_s)
            self._replay(int(warm), int(self.bounds[0]))

    def at(self, n: int) -> ItemIndex:
        """The catalogue with popularity in the window of held-out event `n` (visit them in
        `order`); `coview` then reads the same window."""
        lo_c = int(np.searchsorted(self.bounds, self.lo[n]))
        hi_c = int(np.searchsorted(self.bounds, self.hi[n]))
        while self.next_chunk < hi_c:
            self._add_chunk()
        while self.first_chunk < lo_c:
            self._drop_chunk()
        pop = self.upto - self.before
        if self.changed:
            self.popular = reordered(self.popular, pop, np.unique(np.concatenate(self.changed)))
            self.changed = []
        return self.base.with_row_popularity(pop, self.popular)

    def coview(self, sources: list[str]) -> dict[str, Lists]:
        """The co-view lists of `sources` in the window, each its `coview_max` best partners,
        equal scores by partner id descending, as the API reads them (ZREVRANGE). The
        processor trims each set as it writes it: a partner it dropped that came back
        restarts from 0 there, not here."""
        out = {}
        for item in sources:
            log = self.coview_log.get(item)
            if not log:
                continue
            # Summed when read: only the sources of the ranked users ever are.
            total: dict[str, float] = {}
            for partners in log:
                for other, score in partners.items():
                    total[other] = total.get(other, 0.0) + score
            top = heapq.nlargest(self.coview_max, total.items(), key=lambda kv: (kv[1], kv[0]))
            out[item] = ([p for p, _ in top], np.asarray([s for _, s in top]))
        return out

    def _replay(self, start: int, end: int) -> FeatureUpdates:
        """Events [start, end) through `plan_batch`, from each user's recent items so far."""
        events = (_Event(*row) for row in zip(*(c[start:end] for c in self.cols), strict=True))
        # `now_s` only dates the trending buckets, which no ranking here reads.
        up = plan_batch(events, self.recent, {}, self.params,
                        now_s=float(self.ts[end - 1]) if end > start else 0.0)
        self.recent.update(up.recent)
        return up

    def _add_chunk(self) -> None:
        c = self.next_chunk
        up = self._replay(int(self.bounds[c]), int(self.bounds[c + 1]))
        rows = self.base.rows(list(up.popularity))
        scores = np.fromiter(up.popularity.values(), dtype=np.float64, count=len(rows))
        known = rows < self.base.unknown_row  # training items make the catalogue: all of them
        rows, scores = rows[known], scores[known]
        self.upto[rows] += scores  # distinct rows: one addition each
        for item, partners in up.coview.items():
            self.coview_log.setdefault(item, deque()).append(partners)
        self.chunks.append(_Chunk(rows, scores, up.coview))
        self.changed.append(rows)
        self.next_chunk += 1

    def _drop_chunk(self) -> None:
        chunk = self.chunks.popleft()
        self.before[chunk.rows] += chunk.scores
        for item in chunk.coview:
            log = self.coview_log[item]
            log.popleft()  # its oldest: chunks leave in the order they came
            if not log:
                del self.coview_log[item]
        self.changed.append(chunk.rows)
        self.first_chunk += 1


def reordered(order: np.ndarray, popularity: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """`order` (the rows with popularity > 0, most popular first, equal ones by row descending:
    `ItemIndex.with_row_popularity`) after the distinct rows `changed` got their `popularity`.
    The others keep their places relative to each other, so the changed ones are merged in
    rather than the catalogue sorted again (a sort of 100,000 items per ranked user was most
    of the evaluation's time)."""
    moved = np.zeros(len(popularity), dtype=bool)
    moved[changed] = True
    keep = order[~moved[order]]
    new = changed[popularity[changed] > 0]
    new = new[np.lexsort((-new, -popularity[new]))]
    ascending, key = -popularity[keep], -popularity[new]
    at = np.searchsorted(ascending, key, "left")
    end = np.searchsorted(ascending, key, "right")
    for j in np.flatnonzero(end > at).tolist():  # equal popularity: the larger rows first
        at[j] += np.searchsorted(-keep[at[j]:end[j]], -new[j])
    return np.insert(keep, at, new)
