"""Candidate generation, blended scoring, business rules: one pure function, online and offline.

The API gathers a user's features from Redis and offline evaluation builds them from training
data; both call `rank` with the same plain structures, so what is measured is what is served.

score = w_coview*coview + w_embed*embedding + w_pop*popularity + w_rec*recency + w_cf*cf
        (+ freshness_boost for items created within freshness_days)
Each signal is divided by its maximum over the request's eligible candidates:
- coview: sum over source items (the user's recent items) of the co-view affinity;
- embedding: best cosine similarity (from the published KNN lists) to any source item, >= 0;
- recency: best 0.5**(age/half_life) over the source items that led to the candidate;
- cf: the larger of the normalised ALS user score and the best ALS item-item score;
- popularity: the global (time-decayed) popularity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from reco.catalog import Catalog, Popularity
from reco.rules import Filters, diversify, eligible, freshness

if TYPE_CHECKING:
    from reco.settings import Settings

Lists = tuple[list[str], np.ndarray]  # (ids best first, scores)
SIGNALS = ("coview", "embedding", "popularity", "recency", "cf")


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
    popular_filler_n: int = 200
    recency_half_life_s: float = 6 * 3600.0
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
            max_category_share=settings.max_category_share,
            freshness_boost=settings.freshness_boost, freshness_days=settings.freshness_days,
        )

    def weight(self, signal: str) -> float:
        return {"coview": self.w_coview, "embedding": self.w_embed, "popularity": self.w_pop,
                "recency": self.w_recency, "cf": self.w_cf}[signal]


@dataclass
class UserFeatures:
    """One user's real-time and offline features; lists keyed by source (recent) item."""

    recent: list[str]  # distinct item ids, newest first
    recent_times: dict[str, float]  # item id -> epoch seconds last touched
    now: float
    coview: dict[str, Lists] = field(default_factory=dict)
    knn: dict[str, Lists] = field(default_factory=dict)
    item_cf: dict[str, Lists] = field(default_factory=dict)
    user_cf: Lists | None = None


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    contributions: dict[str, float]  # weighted, normalised signal values (+ "freshness")
    source_item: str | None  # the recent item that led to it most


@dataclass(frozen=True)
class Ranking:
    strategy: Literal["personalized", "popular"]
    items: list[ScoredItem]


def rank(features: UserFeatures, popularity: Popularity, catalog: Catalog,
         config: RankConfig, filters: Filters | None = None, k: int = 20) -> Ranking:
    """The top-k items for one user, best first, after every business rule."""
    filters = filters or Filters()
    sources = features.recent[: config.recent_n]
    cands = _Candidates(len(sources))
    for s, item in enumerate(sources):
        for name in ("coview", "knn", "item_cf"):
            lists = getattr(features, name).get(item)
            if lists is not None:
                cands.add_source(name, s, lists, config.neighbours_n)
    user_cf = features.user_cf if features.user_cf is not None else ([], np.zeros(0))
    cands.add_user_cf(user_cf)
    personal = len(cands.index) > 0
    _add_popular_filler(cands, popularity, catalog, filters, config.popular_filler_n)

    ids = list(cands.index)
    if not ids:
        return Ranking("personalized" if personal else "popular", [])
    meta = catalog.lookup(ids)
    keep = eligible(meta, catalog, filters)
    if filters.exclude_seen and features.recent:
        seen = set(features.recent)
        keep &= np.fromiter((i not in seen for i in ids), dtype=bool, count=len(ids))

    recency_w = _source_recency(sources, features.recent_times, features.now,
                                config.recency_half_life_s)
    parts = cands.signals(recency_w, popularity.scores_of(ids), keep)
    contrib = {sig: config.weight(sig) * parts[sig] for sig in SIGNALS}
    contrib["freshness"] = config.freshness_boost * freshness(meta, features.now,
                                                              config.freshness_days)
    score = sum(contrib.values())

    pool = np.flatnonzero(keep)
    order = pool[np.argsort(-score[pool], kind="stable")]
    share = 1.0 if filters.category is not None else config.max_category_share
    top = diversify(order, meta.category, k, share)
    src = cands.best_source(top, recency_w, parts["norms"], config)
    items = [
        ScoredItem(ids[p], float(score[p]), {n: float(c[p]) for n, c in contrib.items()},
                   sources[src[j]] if src[j] >= 0 else None)
        for j, p in enumerate(top.tolist())
    ]
    return Ranking("personalized" if personal else "popular", items)


def similar_items(item_id: str, coview: Lists | None, knn: Lists | None, catalog: Catalog,
                  config: RankConfig, k: int = 20) -> list[ScoredItem]:
    """Neighbours of one item blended from co-view and embeddings (in stock, not itself)."""
    features = UserFeatures([item_id], {}, 0.0, coview={item_id: coview} if coview else {},
                            knn={item_id: knn} if knn else {})
    blend = RankConfig(w_coview=config.w_coview, w_embed=config.w_embed, w_pop=0.0,
                       w_recency=0.0, w_cf=0.0, recent_n=1, neighbours_n=config.neighbours_n,
                       popular_filler_n=0, max_category_share=1.0, freshness_boost=0.0)
    return rank(features, Popularity.empty(), catalog, blend, Filters(), k).items


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


def _add_popular_filler(cands: _Candidates, popularity: Popularity, catalog: Catalog,
                        filters: Filters, n: int) -> None:
    """Popular items that pass the filters, so a filtered or thin list still fills up."""
    if n <= 0 or not popularity.ids:
        return
    mask = eligible(popularity.meta(catalog), catalog, filters)
    for pos in np.flatnonzero(mask)[:n].tolist():
        cands.index.setdefault(popularity.ids[pos], len(cands.index))


def _norm(x: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, float]:
    top = float(x[keep].max()) if keep.any() else 0.0
    return (x / top if top > 0 else np.zeros_like(x)), top


class _Candidates:
    """Candidate ids in first-seen order and, per source item, the rows each list points to."""

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self.index: dict[str, int] = {}
        self.entries: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {
            "coview": [], "knn": [], "item_cf": []}
        self.user_cf: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0))

    def _rows(self, ids: list[str]) -> np.ndarray:
        index = self.index
        return np.fromiter((index.setdefault(i, len(index)) for i in ids), np.int64, len(ids))

    def add_source(self, name: str, source: int, lists: Lists, limit: int) -> None:
        ids, scores = lists
        ids = ids[:limit]
        self.entries[name].append((source, self._rows(ids), np.asarray(scores[: len(ids)])))

    def add_user_cf(self, lists: Lists) -> None:
        ids, scores = lists
        self.user_cf = (self._rows(ids), np.asarray(scores, dtype=np.float64))

    def _matrix(self, name: str, m: int) -> np.ndarray:
        out = np.zeros((self.n_sources, m))
        for s, rows, scores in self.entries[name]:
            out[s, rows] = scores
        return out

    def signals(self, recency_w: np.ndarray, pop: np.ndarray, keep: np.ndarray) -> dict:
        m = len(self.index)
        self.coview = self._matrix("coview", m)
        self.embed = np.maximum(self._matrix("knn", m), 0.0)  # negative cosine: no evidence
        self.item_cf = np.maximum(self._matrix("item_cf", m), 0.0)
        self.present = np.zeros((self.n_sources, m), dtype=bool)
        for entries in self.entries.values():
            for s, rows, _ in entries:
                self.present[s, rows] = True
        user_cf = np.zeros(m)
        user_cf[self.user_cf[0]] = np.maximum(self.user_cf[1], 0.0)

        coview, c_top = _norm(self.coview.sum(axis=0), keep)
        embed, e_top = _norm(self.embed.max(axis=0, initial=0.0), keep)
        rec_raw = (self.present * recency_w[:, None]).max(axis=0, initial=0.0)
        recency, r_top = _norm(rec_raw, keep)
        item_cf, f_top = _norm(self.item_cf.max(axis=0, initial=0.0), keep)
        ucf, _ = _norm(user_cf, keep)
        popularity, _ = _norm(pop, keep)
        return {"coview": coview, "embedding": embed, "popularity": popularity,
                "recency": recency, "cf": np.maximum(ucf, item_cf),
                "norms": (c_top, e_top, r_top, f_top)}

    def best_source(self, top: np.ndarray, recency_w: np.ndarray, norms: tuple,
                    config: RankConfig) -> np.ndarray:
        """Per chosen row, the source item contributing most to its score (-1: none)."""
        if self.n_sources == 0 or len(top) == 0:
            return np.full(len(top), -1)
        c_top, e_top, r_top, f_top = (n if n > 0 else 1.0 for n in norms)
        per_source = (config.w_coview * self.coview[:, top] / c_top
                      + config.w_embed * self.embed[:, top] / e_top
                      + config.w_cf * self.item_cf[:, top] / f_top
                      + config.w_recency * self.present[:, top] * recency_w[:, None] / r_top)
        present = self.present[:, top]
        best = np.where(present, per_source, -np.inf).argmax(axis=0)
        return np.where(present.any(axis=0), best, -1)
