"""Candidate generation, blended scoring, business rules: one pure function, online and offline.

The API gathers a user's features from Redis and offline evaluation builds them from training
data; both call `rank` with the same plain structures, so what is measured is what is served.

score = w_coview*coview + w_embed*embedding + w_pop*popularity + w_rec*recency + w_cf*cf
        + w_seq*seq, times (1 + freshness_boost) for items created within freshness_days
Each signal is divided by its maximum over the request's eligible candidates:
- coview: sum over source items (the user's recent items) of the co-view affinity;
- embedding: best cosine similarity (from the published KNN lists) to any source item, >= 0;
  with `source_half_n` > 0, every source's list scores (coview, embedding, ALS item-item) are
  first multiplied by 0.5**(position / source_half_n), position 0 being the newest source, so
  the items touched last count most;
- with `neighbour_agg` "sum", embedding and ALS item-item similarities (each >= 0) are summed
  over the sources like co-view instead of taking the best one;
- recency: best 0.5**(age/half_life) over the source items that led to the candidate;
- cf: the larger of the normalised ALS user score and the best ALS item-item score;
- seq: the sequential model's (SASRec's) probability that the item is the user's next one;
- popularity: the global (time-decayed) popularity.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from reco.catalog import ItemIndex
from reco.filler import newest_among_unscored, popular_filler
from reco.rules import (
    Filters,
    category_cap,
    diversify,
    diversify_head,
    most_in_one_category,
)
from reco.scoring import score_candidates, source_contributions

if TYPE_CHECKING:
    from reco.settings import Settings

Lists = tuple[list[str], np.ndarray]  # (ids best first, scores)


class RowList(NamedTuple):
    """A neighbour list already mapped to rows of the ItemIndex it is ranked with (a caller
    that caches parsed lists across requests saves the id -> row lookups). A named tuple:
    requests make a dozen of these, and a frozen dataclass costs ~3x more to create."""

    rows: np.ndarray  # int64, every row < that index's unknown_row
    scores: np.ndarray


Neighbours = Lists | RowList
SIGNALS = ("coview", "embedding", "popularity", "recency", "cf", "seq")
COVIEW, KNN, ITEM_CF, USER_CF = 0, 1, 2, 3
_local = threading.local()  # per-thread work arrays of the candidate dedup


@dataclass(frozen=True)
class RankConfig:
    """Weights and knobs; `from_settings` maps the project settings onto it.

    The defaults are the seed's untuned blend, kept because hand-computed tests rank with
    them; what the API and the evaluations serve comes from `Settings` (tuned on MovieLens,
    benchmarks/reports/tuning.md) through `from_settings`."""

    w_coview: float = 0.4
    w_embed: float = 0.3
    w_pop: float = 0.2
    w_recency: float = 0.1
    w_cf: float = 0.0
    w_seq: float = 0.0
    recent_n: int = 10
    neighbours_n: int = 50
    popular_filler_n: int = 50
    recency_half_life_s: float = 6 * 3600.0
    source_half_n: float = 0.0  # > 0: a source's lists weigh 0.5**(position/source_half_n)
    neighbour_agg: str = "max"  # "max" or "sum" over sources, for embedding and ALS item-item
    max_category_share: float = 0.5
    freshness_boost: float = 0.1
    freshness_days: float = 14.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RankConfig:
        return cls(
            w_coview=settings.w_coview, w_embed=settings.w_embed, w_pop=settings.w_pop,
            w_recency=settings.w_recency, w_cf=settings.w_cf, w_seq=settings.w_seq,
            recent_n=settings.reco_recent_n,
            neighbours_n=settings.reco_neighbours_n,
            popular_filler_n=settings.reco_popular_filler_n,
            recency_half_life_s=settings.reco_recency_half_life_s,
            source_half_n=settings.reco_source_half_n,
            neighbour_agg=settings.reco_neighbour_agg,
            max_category_share=settings.max_category_share,
            freshness_boost=settings.freshness_boost, freshness_days=settings.freshness_days,
        )


@dataclass
class UserFeatures:
    """One user's real-time and offline features; lists keyed by source (recent) item."""

    recent: list[str]  # distinct item ids, newest first
    recent_times: dict[str, float]  # item id -> epoch seconds last touched
    now: float
    coview: dict[str, Neighbours] = field(default_factory=dict)
    knn: dict[str, Neighbours] = field(default_factory=dict)
    item_cf: dict[str, Neighbours] = field(default_factory=dict)
    user_cf: Neighbours | None = None  # the user's ALS candidates
    user_seq: Neighbours | None = None  # the user's SASRec next-item candidates
    seen: Collection[str] = ()  # every item the user interacted with, beyond `recent`


class ScoredItem(NamedTuple):
    """One recommended item (a named tuple: cheap to create, k of them per request)."""

    item_id: str
    score: float
    # Filled only by rank(..., explain=True):
    contributions: dict[str, float]  # weighted, normalised signal values (+ "freshness")
    source_item: str | None  # the recent item that led to it most


@dataclass(frozen=True)
class Ranking:
    strategy: Literal["personalized", "popular"]
    items: list[ScoredItem]
    # How many of the items the fullest category holds: over the category cap only when too
    # few other items were eligible (`rules.diversify`).
    most_in_one_category: int = 0


def rank(features: UserFeatures, items: ItemIndex, config: RankConfig,
         filters: Filters | None = None, k: int = 20, explain: bool = False) -> Ranking:
    """The top-k items for one user, best first, after every business rule.

    `explain` fills each item's per-signal contributions (skipped otherwise: it is per item
    Python work on the hot path).
    """
    filters = filters or Filters()
    sources = features.recent[: config.recent_n]
    exclude = ([*features.recent, *features.seen]
               if filters.exclude_seen and (features.recent or features.seen) else [])
    c = _Candidates(features, sources, items, config, exclude)
    c.weigh_sources(config.source_half_n)
    # Enough popular filler to fill k even after the user's seen items are excluded.
    filler_n = config.popular_filler_n and max(config.popular_filler_n,
                                               k + len(features.recent) + len(features.seen))
    share = 1.0 if filters.category is not None else config.max_category_share
    recency_w = _source_recency(sources, features.recent_times, features.now,
                                config.recency_half_life_s)
    # Dedup, rules, signals, scores and the sort in one compiled pass.
    filler = popular_filler(items, filters, filler_n, category_cap(k, share))
    weighted, fresh, score, order = c.score(filler, filters, config, recency_w, features.now)
    if c.m == 0:
        return Ranking("popular", [])
    # The category cap looks at the head (~4k of ~1,000 candidates), which nearly always
    # settles the top k; at all of them if not.
    n_head = _head_length(order, score, 4 * k + 32)
    # Unscored items (the new-arrivals filler) tie at 0 in row order: newest first instead.
    unscored_in_head = n_head > 0 and score[order[n_head - 1]] <= 0.0
    if unscored_in_head:
        order = newest_among_unscored(order, score, items.created_at[c.meta_rows])
    top = None
    if n_head < len(order):
        at = diversify_head(np.arange(n_head), items.category[c.meta_rows[order[:n_head]]], k,
                            share)
        top = order[at] if at is not None else None
    if top is None:
        if n_head < len(order) and not unscored_in_head:
            # The cap reaches past the head, maybe into the unscored tail.
            order = newest_among_unscored(order, score, items.created_at[c.meta_rows])
        top = diversify(order, items.category[c.meta_rows], k, share)
    scores = score[top].tolist()
    ids = c.item_ids(top)
    strategy = c.strategy(top)
    most = most_in_one_category(items.category[c.meta_rows[top]])
    if not explain:
        return Ranking(strategy, [ScoredItem(i, s, {}, None) for i, s in zip(ids, scores,
                                                                              strict=True)], most)
    src = c.best_source(top, recency_w, config).tolist()
    names = [*SIGNALS, "freshness"]
    table = np.vstack([weighted[:, top], fresh[top]]).T.tolist()
    return Ranking(strategy, [
        ScoredItem(i, s, dict(zip(names, table[j], strict=True)),
                   sources[src[j]] if src[j] >= 0 else None)
        for j, (i, s) in enumerate(zip(ids, scores, strict=True))
    ], most)


def similar_items(item_id: str, coview: Neighbours | None, knn: Neighbours | None,
                  items: ItemIndex, config: RankConfig, k: int = 20,
                  neighbours_n: int = 100) -> list[ScoredItem]:
    """Neighbours of one item blended from co-view and embeddings (in stock, not itself),
    `neighbours_n` entries of each list (`RECO_RECO_SIMILAR_N`; below k, fewer than k may
    come back)."""
    features = UserFeatures([item_id], {}, 0.0, coview={item_id: coview} if coview else {},
                            knn={item_id: knn} if knn else {})
    blend = RankConfig(w_coview=config.w_coview, w_embed=config.w_embed, w_pop=0.0,
                       w_recency=0.0, w_cf=0.0, w_seq=0.0, recent_n=1,
                       neighbours_n=neighbours_n, popular_filler_n=0,
                       max_category_share=1.0, freshness_boost=0.0)
    return rank(features, items, blend, Filters(), k).items


def popular_items(items: ItemIndex, filters: Filters, k: int) -> list[tuple[str, float]]:
    """The k most popular items passing `filters`, with their raw popularity."""
    rows = popular_filler(items, filters, k)
    return [(items.ids[r], float(items.popularity[r])) for r in rows.tolist()]


def _source_recency(sources: list[str], times: dict[str, float], now: float,
                    half_life_s: float) -> np.ndarray:
    """0.5**(age/half_life) per source; a missing time borrows the next newer item's."""
    out = np.zeros(len(sources))
    last = now
    for s, item in enumerate(sources):
        t = times.get(item)
        last = min(last, t) if t is not None else last
        out[s] = 0.5 ** (max(0.0, now - last) / half_life_s)
    return out


def _head_length(order: np.ndarray, score: np.ndarray, n: int) -> int:
    """How many of `order` (best first) make its first `n`, extended over ties with the n-th."""
    if n >= len(order):
        return len(order)
    last = score[order[n - 1]]
    while n < len(order) and score[order[n]] == last:
        n += 1
    return n


def _signal_weights(config: RankConfig) -> np.ndarray:
    """The weights in SIGNALS order, as the compiled pass takes them."""
    return np.array([config.w_coview, config.w_embed, config.w_pop, config.w_recency,
                     config.w_cf, config.w_seq], dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _position_weights(n: int, half_n: float) -> np.ndarray:
    weights = 0.5 ** (np.arange(n) / half_n)
    weights.flags.writeable = False
    return weights


def _scratch(size: int) -> np.ndarray:
    """A per-thread int32 work array of at least `size` (contents are garbage)."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = np.empty(max(size, 2 * len(buf) if buf is not None else 0),
                                    dtype=np.int32)
    return buf


class _Candidates:
    """All list entries of one request mapped to candidate positions in one vectorised pass.

    Candidates are identified by their row in the ItemIndex; ids the index does not know get
    codes past its unknown row (their metadata is the unknown row's). Entries are grouped by
    kind (co-view, KNN, ALS item-item, then the user's ALS and SASRec lists), each kind's id
    lists before its row lists, sources newest first: per candidate, sums add in the order
    they always did.
    """

    def __init__(self, f: UserFeatures, sources: list[str], items: ItemIndex,
                 config: RankConfig, exclude: list[str]) -> None:
        self.items, self.n_sources = items, len(sources)
        ids: list[str] = []  # every id to map, in the order unknown ids get their codes
        # Per kind, its lists' segments: (source, offset in ids, length, scores) of lists given
        # as ids, (source, -1, rows, scores) of lists given as rows.
        id_segs: tuple[list, list, list] = ([], [], [])
        row_segs: tuple[list, list, list] = ([], [], [])
        limit = config.neighbours_n
        # ALS's item lists only with a CF weight, as its user list below.
        tables = (f.coview, f.knn, f.item_cf if config.w_cf > 0 else {})
        for s, item in enumerate(sources):
            for code in (COVIEW, KNN, ITEM_CF):
                lists = tables[code].get(item)
                if lists is None:
                    continue
                if isinstance(lists, RowList):
                    rows = lists.rows[:limit]
                    if len(rows):
                        row_segs[code].append((s, -1, rows, lists.scores[: len(rows)]))
                elif lists[0]:
                    part = lists[0][:limit]
                    id_segs[code].append((s, len(ids), len(part),
                                          np.asarray(lists[1][: len(part)], dtype=np.float64)))
                    ids.extend(part)
        # The user's own lists (ALS, SASRec): (offset in ids or -1 for a RowList, length,
        # the list). Each only with its weight: the API does not even read it otherwise, and
        # its items would still be candidates (and move every signal's normalisation).
        user_parts: list[tuple[int, int, Neighbours | None]] = []
        for lists in (f.user_cf if config.w_cf > 0 else None,
                      f.user_seq if config.w_seq > 0 else None):
            if isinstance(lists, RowList):
                user_parts.append((-1, len(lists.rows), lists))
            elif lists is not None and lists[0]:
                user_parts.append((len(ids), len(lists[0]), lists))
                ids.extend(lists[0])
            else:
                user_parts.append((-1, 0, None))
        n_entry_ids = len(ids)
        ids.extend(exclude)
        codes = self._codes(ids, n_entry_ids)
        self.exclude = codes[n_entry_ids:]

        segs = []  # (kind, source, rows, scores) in entry order
        for code in (COVIEW, KNN, ITEM_CF):
            for s, at, n, scores in id_segs[code]:
                segs.append((code, s, codes[at: at + n], scores))
            for s, _, rows, scores in row_segs[code]:
                segs.append((code, s, rows, scores))
        self.bounds = [0, 0, 0]  # end of the co-view, KNN and ALS item-item entries
        total = 0
        for code, _, rows, _ in segs:
            total += len(rows)
            self.bounds[code] = total
        self.bounds[KNN] = max(self.bounds[KNN], self.bounds[COVIEW])
        self.bounds[ITEM_CF] = max(self.bounds[ITEM_CF], self.bounds[KNN])
        self.n_src_entries = total
        row_parts = [seg[2] for seg in segs]
        score_parts = [seg[3] for seg in segs]
        self.user_bounds = []  # end of the ALS user entries, then of the SASRec ones
        for at, n, lists in user_parts:
            if isinstance(lists, RowList):
                row_parts.append(lists.rows)
                score_parts.append(lists.scores[:n])
            elif lists is not None and n:
                row_parts.append(codes[at: at + n])
                score_parts.append(np.asarray(lists[1][:n], dtype=np.float64))
            total += n
            self.user_bounds.append(total)
        self.n_entries = total
        self.scores = np.concatenate(score_parts) if score_parts else np.zeros(0)
        self.entry_rows = row_parts
        lengths = [len(seg[2]) for seg in segs]
        self.src = np.repeat(np.array([seg[1] for seg in segs], dtype=np.int64), lengths)

    def _codes(self, ids: list[str], n_assign: int) -> np.ndarray:
        """Rows of `ids`; unknown ids among the first `n_assign` get new codes, later unknown
        ids the code an earlier one got, else -1."""
        rows = self.items.rows(ids)
        unknown = self.items.unknown_row
        self.extra: dict[str, int] = {}  # ids unknown to the index -> code
        for j in np.flatnonzero(rows == unknown).tolist():
            code = self.extra.get(ids[j])
            if code is None:
                code = unknown + 1 + len(self.extra) if j < n_assign else -1
                if j < n_assign:
                    self.extra[ids[j]] = code
            rows[j] = code
        return rows

    def weigh_sources(self, half_n: float) -> None:
        """Scale each source's list scores by 0.5**(position/half_n) (newest source = 0)."""
        if half_n > 0 and self.n_sources > 1 and self.n_src_entries:
            pos_w = _position_weights(self.n_sources, half_n)
            self.scores[: self.n_src_entries] *= pos_w[self.src]

    def score(self, filler: np.ndarray, filters: Filters, config: RankConfig,
              recency_w: np.ndarray, now: float) -> tuple:
        """Candidates (`rows`, each entry's `pos`, each raw signal's maximum `tops`) and
        their scores: see `reco.scoring.score_candidates`. Returns (weighted, fresh, score,
        the eligible candidates best first)."""
        items = self.items
        codes = np.concatenate([*self.entry_rows, filler]) if self.entry_rows else filler
        code = items.code_of(filters.category)
        slot = _scratch(items.unknown_row + 1 + len(self.extra))
        self.scores = self.scores.astype(np.float64, copy=False)
        lo, hi = filters.min_price, filters.max_price
        rows, pos, weighted, fresh, tops, score, order = score_candidates(
            codes.astype(np.int64, copy=False), self.n_entries, self._kind_bounds(),
            self.scores, self.src, recency_w, slot,
            items.unknown_row, items.popularity, items.in_stock, items.category, items.price,
            items.created_at, -1 if code is None else code,  # -1: code_of never returns it
            lo is not None, 0.0 if lo is None else float(lo), hi is not None,
            0.0 if hi is None else float(hi), self.exclude, _signal_weights(config),
            config.neighbour_agg == "sum", float(config.freshness_boost), float(now),
            float(config.freshness_days))
        self.rows, self.pos, self.m, self.tops = rows, pos, len(rows), tops
        self.meta_rows = np.minimum(rows, items.unknown_row)
        self.extra_ids = list(self.extra)
        return weighted, fresh, score, order

    def _kind_bounds(self) -> np.ndarray:
        """Ends of the co-view, KNN, ALS item-item and ALS user entries, as the pass takes them."""
        return np.array([*self.bounds, self.user_bounds[0]], dtype=np.int64)

    def strategy(self, top: np.ndarray) -> Literal["personalized", "popular"]:
        """"personalized" when a served position came from one of the user's lists (a recent
        item's neighbours, ALS or SASRec), else "popular" (the filler alone was served)."""
        if self.n_entries == 0 or len(top) == 0:
            return "popular"
        mine = np.zeros(self.m, dtype=bool)
        mine[self.pos] = True
        return "personalized" if mine[top].any() else "popular"

    def item_ids(self, positions: np.ndarray) -> list[str]:
        rows = self.rows[positions].tolist()
        ids, unknown = self.items.ids, self.items.unknown_row
        if not self.extra:
            return [ids[row] for row in rows]
        return [ids[row] if row < unknown else self.extra_ids[row - unknown - 1]
                for row in rows]

    def best_source(self, top: np.ndarray, recency_w: np.ndarray,
                    config: RankConfig) -> np.ndarray:
        """Per chosen position (after `score`), the source item whose own entries give it the
        most score (-1: no source listed it); ties go to the newest source."""
        if self.n_sources == 0 or len(top) == 0:
            return np.full(len(top), -1)
        value, listed = source_contributions(
            top.astype(np.int64, copy=False), self.m, self.pos, self._kind_bounds(),
            self.scores, self.src, self.n_sources, recency_w, self.tops,
            _signal_weights(config), config.neighbour_agg == "sum")
        best = np.where(listed, value, -np.inf).argmax(axis=1)  # the first of equals: newest
        return np.where(listed.any(axis=1), best, -1)
