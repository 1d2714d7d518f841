"""Candidate generation, blended scoring, business rules: one pure function, online and offline.

The API gathers a user's features from Redis and offline evaluation builds them from training
data; both call `rank` with the same plain structures, so what is measured is what is served.

score = w_coview*coview + w_embed*embedding + w_pop*popularity + w_rec*recency + w_cf*cf
        (+ freshness_boost for items created within freshness_days)
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
- popularity: the global (time-decayed) popularity.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from reco.catalog import ItemIndex
from reco.rules import Filters, diversify, diversify_head, eligible, freshness

if TYPE_CHECKING:
    from reco.settings import Settings

Lists = tuple[list[str], np.ndarray]  # (ids best first, scores)


@dataclass(frozen=True)
class RowList:
    """A neighbour list already mapped to rows of the ItemIndex it is ranked with (a caller
    that caches parsed lists across requests saves the id -> row lookups)."""

    rows: np.ndarray  # int64, every row < that index's unknown_row
    scores: np.ndarray


Neighbours = Lists | RowList
SIGNALS = ("coview", "embedding", "popularity", "recency", "cf")
COVIEW, KNN, ITEM_CF, USER_CF = 0, 1, 2, 3


@dataclass(frozen=True)
class RankConfig:
    """Weights and knobs; `from_settings` maps the project settings onto it."""

    w_coview: float = 0.4
    w_embed: float = 0.3
    w_pop: float = 0.2
    w_recency: float = 0.1
    w_cf: float = 0.0
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
            w_recency=settings.w_recency, w_cf=settings.w_cf, recent_n=settings.reco_recent_n,
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
    user_cf: Lists | None = None
    seen: Collection[str] = ()  # every item the user interacted with, beyond `recent`


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    # Filled only by rank(..., explain=True):
    contributions: dict[str, float]  # weighted, normalised signal values (+ "freshness")
    source_item: str | None  # the recent item that led to it most


@dataclass(frozen=True)
class Ranking:
    strategy: Literal["personalized", "popular"]
    items: list[ScoredItem]


def rank(features: UserFeatures, items: ItemIndex, config: RankConfig,
         filters: Filters | None = None, k: int = 20, explain: bool = False) -> Ranking:
    """The top-k items for one user, best first, after every business rule.

    `explain` fills each item's per-signal contributions (skipped otherwise: it is per item
    Python work on the hot path).
    """
    filters = filters or Filters()
    sources = features.recent[: config.recent_n]
    c = _Candidates(features, sources, items, config)
    c.weigh_sources(config.source_half_n)
    personal = c.n_entries > 0
    strategy: Literal["personalized", "popular"] = "personalized" if personal else "popular"
    # Enough popular filler to fill k even after the user's seen items are excluded.
    filler_n = config.popular_filler_n and max(config.popular_filler_n,
                                               k + len(features.recent) + len(features.seen))
    c.finish(_popular_filler(items, filters, filler_n))
    if c.m == 0:
        return Ranking(strategy, [])

    keep = eligible(items, c.meta_rows, filters)
    if filters.exclude_seen and (features.recent or features.seen):
        seen = c.codes_of([*features.recent, *features.seen])
        at = np.searchsorted(c.rows, seen)  # c.rows is sorted and unique
        hit = at < c.m
        at, seen = at[hit], seen[hit]
        keep[at[c.rows[at] == seen]] = False
    recency_w = _source_recency(sources, features.recent_times, features.now,
                                config.recency_half_life_s)
    parts, norms = c.signals(recency_w, keep, config.neighbour_agg)
    weights = (config.w_coview, config.w_embed, config.w_pop, config.w_recency, config.w_cf)
    contrib = {sig: w * parts[sig] for sig, w in zip(SIGNALS, weights, strict=True)}
    contrib["freshness"] = config.freshness_boost * freshness(
        items, c.meta_rows, features.now, config.freshness_days)
    score = sum(contrib.values())

    pool = np.flatnonzero(keep)
    share = 1.0 if filters.category is not None else config.max_category_share
    category = items.category[c.meta_rows]
    # Sorting the whole pool (~1,000 candidates) is most of the cost of this step; the head
    # nearly always settles the top k, and the full sort runs when it does not.
    head = _best_first(pool, score, 4 * k + 32)
    top = diversify_head(head, category, k, share) if len(head) < len(pool) else None
    if top is None:
        full = head if len(head) == len(pool) else _best_first(pool, score, len(pool))
        top = diversify(full, category, k, share)
    scores = score[top].tolist()
    ids = [c.item_id(p) for p in top.tolist()]
    if not explain:
        return Ranking(strategy, [ScoredItem(i, s, {}, None) for i, s in zip(ids, scores,
                                                                              strict=True)])
    src = c.best_source(top, recency_w, norms, config).tolist()
    names = list(contrib)
    table = np.stack([contrib[n][top] for n in names]).T.tolist()
    return Ranking(strategy, [
        ScoredItem(i, s, dict(zip(names, table[j], strict=True)),
                   sources[src[j]] if src[j] >= 0 else None)
        for j, (i, s) in enumerate(zip(ids, scores, strict=True))
    ])


def similar_items(item_id: str, coview: Neighbours | None, knn: Neighbours | None,
                  items: ItemIndex,
                  config: RankConfig, k: int = 20) -> list[ScoredItem]:
    """Neighbours of one item blended from co-view and embeddings (in stock, not itself)."""
    features = UserFeatures([item_id], {}, 0.0, coview={item_id: coview} if coview else {},
                            knn={item_id: knn} if knn else {})
    blend = RankConfig(w_coview=config.w_coview, w_embed=config.w_embed, w_pop=0.0,
                       w_recency=0.0, w_cf=0.0, recent_n=1, neighbours_n=config.neighbours_n,
                       popular_filler_n=0, max_category_share=1.0, freshness_boost=0.0)
    return rank(features, items, blend, Filters(), k).items


def popular_items(items: ItemIndex, filters: Filters, k: int) -> list[tuple[str, float]]:
    """The k most popular items passing `filters`, with their raw popularity."""
    rows = _popular_filler(items, filters, k)
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


def _best_first(pool: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """The first `n` (or more, on ties) of `pool` ordered by score, best first, ties in pool
    order: exactly the head of the full stable sort, without sorting the whole pool."""
    if n < len(pool):
        s = score[pool]
        pool = pool[s >= np.partition(s, len(s) - n)[len(s) - n]]
    return pool[np.argsort(-score[pool], kind="stable")]


def _popular_filler(items: ItemIndex, filters: Filters, n: int) -> np.ndarray:
    """Rows of the `n` most popular items passing the filters (cached per filter tuple)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)

    def compute() -> np.ndarray:
        rows = items.popular_rows
        return rows[eligible(items, rows, filters)][:n]

    return items.filler((filters.key, n), compute)


def _norm(x: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, float]:
    """x divided by its max over the eligible candidates (all zeros when that max is <= 0)."""
    top = float(x.max(where=keep, initial=0.0))
    return (x / top if top > 0 else np.zeros_like(x)), top


class _Candidates:
    """All list entries of one request mapped to candidate positions in one vectorised pass.

    Candidates are identified by their row in the ItemIndex; ids the index does not know get
    codes past its unknown row (their metadata is the unknown row's).
    """

    def __init__(self, f: UserFeatures, sources: list[str], items: ItemIndex,
                 config: RankConfig) -> None:
        self.items, self.n_sources = items, len(sources)
        # Entries of lists given as ids first, then of lists already mapped to rows.
        ids: list[str] = []
        id_meta: list[tuple[int, int, int]] = []  # (kind, source, length)
        id_scores: list[np.ndarray] = []
        row_parts: list[np.ndarray] = []
        row_meta: list[tuple[int, int, int]] = []
        row_scores: list[np.ndarray] = []
        limit = config.neighbours_n
        for s, item in enumerate(sources):
            for code, table in ((COVIEW, f.coview), (KNN, f.knn), (ITEM_CF, f.item_cf)):
                lists = table.get(item)
                if lists is None:
                    continue
                if isinstance(lists, RowList):
                    rows = lists.rows[:limit]
                    row_parts.append(rows)
                    row_meta.append((code, s, len(rows)))
                    row_scores.append(lists.scores[: len(rows)])
                elif lists[0]:
                    part = lists[0][:limit]
                    ids.extend(part)
                    id_meta.append((code, s, len(part)))
                    id_scores.append(np.asarray(lists[1][: len(part)], dtype=np.float64))
        if f.user_cf is not None and f.user_cf[0]:
            ids.extend(f.user_cf[0])
            id_meta.append((USER_CF, -1, len(f.user_cf[0])))
            id_scores.append(np.asarray(f.user_cf[1], dtype=np.float64))
        self.extra: dict[str, int] = {}  # ids unknown to the index -> code
        meta = id_meta + row_meta
        self.n_entries = sum(m[2] for m in meta)
        lengths = np.array([m[2] for m in meta], dtype=np.int64)
        self.kind = np.repeat(np.array([m[0] for m in meta], dtype=np.int8), lengths)
        self.src = np.repeat(np.array([m[1] for m in meta], dtype=np.int64), lengths)
        self.scores = np.concatenate(id_scores + row_scores) if meta else np.zeros(0)
        self.entry_rows = np.concatenate([self.codes_of(ids, assign=True), *row_parts])

    def weigh_sources(self, half_n: float) -> None:
        """Scale each source's list scores by 0.5**(position/half_n) (newest source = 0)."""
        if half_n > 0 and self.n_sources > 1:
            pos_w = 0.5 ** (np.arange(self.n_sources) / half_n)
            by_source = self.src >= 0
            self.scores = self.scores.copy()
            self.scores[by_source] *= pos_w[self.src[by_source]]

    def codes_of(self, ids: list[str], assign: bool = False) -> np.ndarray:
        rows = self.items.rows(ids)
        unknown = self.items.unknown_row
        for j in np.flatnonzero(rows == unknown).tolist():
            code = self.extra.get(ids[j])
            if code is None:
                code = unknown + 1 + len(self.extra) if assign else -1
                if assign:
                    self.extra[ids[j]] = code
            rows[j] = code
        return rows

    def finish(self, filler: np.ndarray) -> None:
        self.rows, inv = np.unique(np.concatenate([self.entry_rows, filler]),
                                   return_inverse=True)
        self.pos = inv[: self.n_entries]
        self.m = len(self.rows)
        self.meta_rows = np.minimum(self.rows, self.items.unknown_row)
        self.extra_ids = list(self.extra)

    def item_id(self, p: int) -> str:
        row = int(self.rows[p])
        unknown = self.items.unknown_row
        return self.items.ids[row] if row < unknown else self.extra_ids[row - unknown - 1]

    def _aggregate(self, code: int, how: str) -> np.ndarray:
        """Per candidate, the sum or the max (>= 0) of one kind of entries' scores."""
        sel = self.kind == code
        if how == "sum":
            return np.bincount(self.pos[sel], weights=self.scores[sel], minlength=self.m)
        if how == "sum+":  # similarities: negative is no evidence
            return np.bincount(self.pos[sel], weights=np.maximum(self.scores[sel], 0.0),
                               minlength=self.m)
        out = np.zeros(self.m)  # negative similarity is no evidence: floor at 0
        np.maximum.at(out, self.pos[sel], self.scores[sel])
        return out

    def signals(self, recency_w: np.ndarray, keep: np.ndarray, agg: str = "max"
                ) -> tuple[dict, tuple]:
        """Each signal per candidate, normalised over the eligible ones; and the maxima."""
        by_source = self.kind != USER_CF
        rec_raw = np.zeros(self.m)
        np.maximum.at(rec_raw, self.pos[by_source], recency_w[self.src[by_source]])
        coview, c_top = _norm(self._aggregate(COVIEW, "sum"), keep)
        how = "sum+" if agg == "sum" else "max"
        embed, e_top = _norm(self._aggregate(KNN, how), keep)
        recency, r_top = _norm(rec_raw, keep)
        item_cf, f_top = _norm(self._aggregate(ITEM_CF, how), keep)
        ucf, _ = _norm(self._aggregate(USER_CF, "max"), keep)
        popularity, _ = _norm(self.items.popularity[self.meta_rows], keep)
        parts = {"coview": coview, "embedding": embed, "popularity": popularity,
                 "recency": recency, "cf": np.maximum(ucf, item_cf)}
        return parts, (c_top, e_top, r_top, f_top)

    def best_source(self, top: np.ndarray, recency_w: np.ndarray, norms: tuple,
                    config: RankConfig) -> np.ndarray:
        """Per chosen position, the source item contributing most to its score (-1: none)."""
        if self.n_sources == 0 or len(top) == 0:
            return np.full(len(top), -1)
        c_top, e_top, r_top, f_top = (n if n > 0 else 1.0 for n in norms)
        slot = np.full(self.m, -1)
        slot[top] = np.arange(len(top))
        j = slot[self.pos]
        sel = (j >= 0) & (self.kind != USER_CF)
        j, src, kind, score = j[sel], self.src[sel], self.kind[sel], self.scores[sel]
        weight = np.select([kind == COVIEW, kind == KNN, kind == ITEM_CF],
                           [config.w_coview / c_top, config.w_embed / e_top,
                            config.w_cf / f_top])
        per_source = np.zeros((len(top), self.n_sources))
        present = np.zeros((len(top), self.n_sources), dtype=bool)
        np.add.at(per_source, (j, src), weight * np.where(kind == COVIEW, score,
                                                           np.maximum(score, 0.0)))
        present[j, src] = True
        per_source += present * (config.w_recency * recency_w / r_top)
        best = np.where(present, per_source, -np.inf).argmax(axis=1)
        return np.where(present.any(axis=1), best, -1)
