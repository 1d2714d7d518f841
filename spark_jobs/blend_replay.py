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
subtracted from, would drift and leave items long gone with crumbs of popularity.

Co-view totals are exact instead: each chunk's affinity of a pair is an integer on a binary grid
fine enough for the earliest replayed event (affinities only grow with time), so a pair's total
is added to and subtracted from without drift and rounded once when read. It is 0 exactly when
no chunk of the window has the pair (the pair is then absent, as in a replay of the window
alone), and pairs with the same increments tie exactly, as in such a replay: ties are common in
co-view lists (every partner of one event gets the same affinity), and their order (by partner
id) decides which partners make the `coview_max` cut. Only the items read (the ranked users'
sources) keep totals, brought up to date when read; each total also kept as a float, a read
picks the best partners with numpy, in time linear in the item's partners, not in the chunks.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque, namedtuple
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reco.catalog import ItemIndex
from reco.event_order import sort_events
from reco.features import (
    FeatureParams,
    FeatureUpdates,
    RecentItems,
    forward_decayed,
    plan_batch,
)
from reco.ranking import Lists

_Event = namedtuple("_Event", "user_id item_id event_type timestamp_s")


@dataclass
class _Chunk:
    """One chunk's increments: popularity by catalogue row, co-view by item and partner."""

    rows: np.ndarray
    scores: np.ndarray
    coview: dict[str, dict[str, float]]


class _Partners:
    """One item's co-view partners: each pair's exact total on the grid, and as a float."""

    __slots__ = ("ids", "slot", "exact", "value", "live", "next")

    def __init__(self) -> None:
        self.ids: list[str] = []  # partner by slot
        self.slot: dict[str, int] = {}
        self.exact: list[int] = []  # 0: no chunk in the totals has the pair
        self.value = np.zeros(8)  # exact, rounded once; 0.0 where exact is 0
        self.live = 0  # slots with exact > 0
        self.next = 0  # the chunks before this one that are in the window are in the totals

    def apply(self, chunks: list[dict[str, float]], sign: int, grid: int) -> None:
        """Chunks' increments entering the totals (`sign` 1) or leaving them (-1)."""
        if 2 * self.live <= len(self.ids):  # pairs gone give their slots back
            keep = [s for s, e in enumerate(self.exact) if e]
            self.ids = [self.ids[s] for s in keep]
            self.slot = {p: s for s, p in enumerate(self.ids)}
            self.exact = [self.exact[s] for s in keep]
            self.value[: len(keep)] = self.value[keep]
        slot, exact, ids = self.slot, self.exact, self.ids
        touched: set[int] = set()
        for partners in chunks:
            for other, score in partners.items():
                s = slot.get(other)
                if s is None:
                    s = slot[other] = len(ids)
                    ids.append(other)
                    exact.append(0)
                was = exact[s]
                # score is a multiple of 2**-grid (`coview_grid`): ldexp scales it exactly.
                now = exact[s] = was + sign * int(math.ldexp(score, grid))
                self.live += (now > 0) - (was > 0)
                touched.add(s)
        if len(ids) > len(self.value):
            value = np.zeros(max(len(ids), 2 * len(self.value)))
            value[: len(self.value)] = self.value
            self.value = value
        at = list(touched)
        self.value[at] = [math.ldexp(exact[s], -grid) for s in at]  # int -> float: rounded once

    def top(self, k: int) -> Lists:
        """The `k` best partners in the totals, equal totals by partner id descending."""
        value = self.value[: len(self.ids)]
        live = np.flatnonzero(value > 0)
        if 0 < k < len(live):  # numpy finds the k-th total; ties with it are sorted below
            cut = np.partition(value[live], len(live) - k)[len(live) - k]
            live = live[value[live] >= cut]
        ids = self.ids
        best = sorted(zip(value[live].tolist(), [ids[s] for s in live.tolist()],
                          strict=True), reverse=True)[:k]
        return [p for _, p in best], np.asarray([v for v, _ in best], dtype=np.float64)


class _CoviewTotals:
    """Co-view lists over a moving window of chunks, exact (module docstring). Totals are kept
    only for the items read: a chunk reaches an item's totals when it is read next."""

    def __init__(self, grid: int) -> None:
        self.grid = grid  # an affinity a is the integer a * 2**grid
        # Item -> (chunk, its partners' increments) of the chunks in the window, oldest first.
        self.log: dict[str, deque[tuple[int, dict[str, float]]]] = {}
        self.read: dict[str, _Partners] = {}

    def add(self, chunk: int, coview: dict[str, dict[str, float]]) -> None:
        for item, partners in coview.items():
            self.log.setdefault(item, deque()).append((chunk, partners))

    def drop(self, chunk: int, coview: dict[str, dict[str, float]]) -> None:
        """Chunk `chunk`, the oldest in the window, leaves it."""
        for item, partners in coview.items():
            log = self.log[item]
            log.popleft()
            if not log:
                del self.log[item]
                self.read.pop(item, None)  # every total back to 0
                continue
            part = self.read.get(item)
            if part is not None and chunk < part.next:
                part.apply([partners], -1, self.grid)

    def top(self, item: str, k: int) -> Lists | None:
        log = self.log.get(item)
        if log is None:
            return None
        part = self.read.get(item)
        if part is None:
            part = self.read[item] = _Partners()
        pending: list[dict[str, float]] = []
        for chunk, partners in reversed(log):  # exact sums: any order gives the same totals
            if chunk < part.next:
                break
            pending.append(partners)
        if pending:
            part.apply(pending, 1, self.grid)
            part.next = log[-1][0] + 1
        return part.top(k)


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
        self.chunks: deque[_Chunk] = deque()
        self.first_chunk = self.next_chunk = 0
        # Co-view partners are a user's items touched within coview_window_s: a replay from
        # that long before the first window finds them as the processor, which kept every
        # user's recent items, did.
        warm = 0
        if self.bounds[0] < len(self.ts):
            warm = int(np.searchsorted(self.ts, self.ts[self.bounds[0]] - params.coview_window_s))
        self.coview_totals = _CoviewTotals(coview_grid(self.ts[warm:], params))
        if self.bounds[0] < len(self.ts):
            self._replay(warm, int(self.bounds[0]))

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
            top = self.coview_totals.top(item, self.coview_max)
            if top is not None:
                out[item] = top
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
        self.coview_totals.add(c, up.coview)
        self.chunks.append(_Chunk(rows, scores, up.coview))
        self.changed.append(rows)
        self.next_chunk += 1

    def _drop_chunk(self) -> None:
        chunk = self.chunks.popleft()
        self.before[chunk.rows] += chunk.scores
        self.coview_totals.drop(self.first_chunk, chunk.coview)
        self.changed.append(chunk.rows)
        self.first_chunk += 1


def coview_grid(ts: np.ndarray, params: FeatureParams) -> int:
    """The exponent g such that every co-view affinity of events at `ts` (in order), and every
    sum of them, is a whole multiple of 2**-g: affinities grow with time, so the first event's
    is the smallest, and no float at or above m * 2**e (frexp) has a bit below 2**(e - 53)."""
    first = forward_decayed(1.0, float(ts[0]), params.landmark_s,
                            params.coview_half_life_s) if len(ts) else None
    if first is None:
        return 0  # beyond the landmark's range: no event has an affinity
    if first == 0.0:
        return 1074  # underflowed: the finest grid, every double is on it
    # Subnormal: capped at that same grid. An affinity ~2**970 times the first one overflows
    # on the grid, and ldexp raises rather than round it.
    return min(53 - math.frexp(first)[1], 1074)


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
