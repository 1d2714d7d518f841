"""What one recommendation request does: cache check, feature reads, ranking, response bytes.

Routes stay thin; this module holds the request flow, and `reco.ranking` holds the maths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from reco.catalog import ItemIndex
from reco.privacy import pseudonym
from reco.ranking import (
    Neighbours,
    RankConfig,
    Ranking,
    ScoredItem,
    UserFeatures,
    popular_items,
    rank,
    similar_items,
)
from reco.rules import Filters, category_cap, eligible, most_in_one_category
from reco.settings import Settings
from serving import reco_metrics as metrics
from serving.model_items import MODEL_OF_KIND
from serving.reco_lists import ItemListCache
from serving.reco_snapshots import GlobalSignals
from serving.reco_store import (
    ALS,
    ITEM2VEC,
    SASREC,
    USER_KINDS,
    FeatureStore,
    FirstRead,
    ListKey,
    SecondRead,
    StoreUnavailable,
)

log = logging.getLogger(__name__)
CACHED_FALSE, CACHED_TRUE = b'"cached":false}', b'"cached":true}'


_variants: dict[tuple, str] = {}  # parameter tuple -> variant (most requests share a few)


@dataclass(frozen=True)
class RecoParams:
    user_id: str
    k: int = 20
    exclude_seen: bool = True
    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    explain: bool = False

    @cached_property
    def variant(self) -> str:
        """Short stable hash of every parameter that changes the answer (not the user)."""
        params = (self.k, self.exclude_seen, self.category, self.min_price, self.max_price,
                  self.explain)
        variant = _variants.get(params)
        if variant is None:
            if len(_variants) >= 4096:  # categories and prices are open-ended: stay bounded
                _variants.clear()
            variant = _variants[params] = hashlib.blake2b(repr(params).encode(),
                                                          digest_size=8).hexdigest()
        return variant

    @property
    def filters(self) -> Filters:
        return Filters(self.exclude_seen, self.category, self.min_price, self.max_price)


@dataclass
class _Plan:
    sources: list[str]
    have: dict[ListKey, Neighbours | None]  # item and user lists, None until read
    missing: list[ListKey]  # what round 2 reads: not parsed in process
    clock: float


def ranking_key(config: RankConfig, seen_max: int, catalogue_only: str = "auto") -> bytes:
    """A digest of the ranking configuration, of how many seen items a miss excludes and of
    which items may be served (RECO_CATALOGUE_ONLY), that keys every fingerprint: an entry
    ranked with other weights or list lengths (before a redeploy, or by a replica not yet
    restarted) is a miss instead of being served until its TTL. The same on every replica and
    restart: sorted JSON, numbers as floats (a weight given as 1 or 1.0 is one
    configuration)."""
    fields = {name: float(value) if isinstance(value, int | float) else value
              for name, value in {**dataclasses.asdict(config), "seen_max": seen_max,
                                  "catalogue_only": catalogue_only}.items()}
    return hashlib.blake2b(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).digest()


def _fingerprint(first: FirstRead, key: bytes) -> str:
    """A stable digest of the whole recent list (not only its head: after A -> B -> A the head
    is A again, yet B is now seen and a source) and of the user's latest event (the head
    touched again leaves the list as it was, but not its recency), keyed by `ranking_key` at no
    extra cost. "\x1f" and "\x1e" cannot occur in ids (printable)."""
    joined = ("\x1f".join(first.recent) + "\x1e" + (first.last_event or "")).encode()
    return hashlib.blake2b(joined, digest_size=8, key=key).hexdigest()  # ~1.4 us for 50 ids


def _versions_sig(versions: dict[str, str]) -> str:
    return orjson.dumps(versions, option=orjson.OPT_SORT_KEYS).decode()


def _catalog_sig(items: ItemIndex) -> str:
    return orjson.dumps(items.version).decode()  # JSON: a version cannot break the header


class CacheEntry(NamedTuple):
    """A cached response and what it was made with. Stored as "fingerprint catalogue
    per-category allowance" / model versions / body, one per line. This release takes an entry
    of the one before (fewer fields on the first line) for a miss; that release reads this
    one's as made under another catalogue, re-checks it and stamps it its way: during a
    rolling deploy, old and new replicas re-rank each other's entries (never a wrong answer)."""

    fingerprint: str
    catalog: str
    per_category: int  # items one category may fill: the cap, or more if ranking needed more
    versions: str
    body: str

    @classmethod
    def parse(cls, raw: str | None) -> CacheEntry | None:
        parts = raw.split("\n", 2) if raw else ()
        if len(parts) != 3:
            return None
        fingerprint, _, rest = parts[0].partition(" ")
        catalog, _, per_category = rest.rpartition(" ")
        if not catalog or not per_category.isdecimal():
            return None
        return cls(fingerprint, catalog, int(per_category), parts[1], parts[2])

    def dump(self) -> bytes:
        return (f"{self.fingerprint} {self.catalog} {self.per_category}\n{self.versions}\n"
                f"{self.body}").encode()


def _is_newer(ours: str, theirs: str) -> bool:
    """Whether catalogue stamp `ours` is newer than `theirs`. Versions are INCR counters;
    replicas one refresh apart would otherwise re-stamp an entry back and forth. Stamps that
    are not counters (another writer's) count as newer: the last checker's stamp wins."""
    try:
        mine, other = orjson.loads(ours), orjson.loads(theirs)
    except orjson.JSONDecodeError:  # not written by this release: replace it
        return True
    if isinstance(mine, str) and isinstance(other, str) and mine.isdecimal() \
            and other.isdecimal():
        return int(mine) > int(other)
    return True


def _per_category(p: RecoParams, max_share: float, ranking: Ranking) -> int:
    """What an entry's items may put in one category: the cap, or as many as ranking had to
    (too few other items were eligible)."""
    cap = category_cap(p.k, 1.0 if p.filters.category is not None else max_share)
    return p.k if cap is None else max(cap, ranking.most_in_one_category)


def _still_eligible(entry: CacheEntry, p: RecoParams, items: ItemIndex) -> bool:
    """Whether every item of a cached response passes the request's hard rules (in stock, in
    the asked category and price range) in the catalogue `items`, and no category fills more
    than the entry allows: ~35 us for 20 items of 100,000 (cold id lookups), paid once per
    entry and catalogue version (then re-stamped)."""
    try:
        ids = [item["item_id"] for item in orjson.loads(entry.body)["items"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):  # not an entry of ours: re-rank
        return False
    rows = items.rows(ids)
    if not eligible(items, rows, p.filters).all():
        return False
    # An item moved into another category can take that one past what the entry allows.
    # Re-ranking decides whether too few others justify it, as ranking did for the entry.
    return most_in_one_category(items.category[rows]) <= entry.per_category


class AsyncReads:
    """The store's reads on the event loop (the default)."""

    def __init__(self, store: FeatureStore) -> None:
        self.first_read = store.first_read_async
        self.second_read = store.second_read_async
        self.item_lists = store.item_lists_async


class ThreadReads:
    """The store's blocking reads in the threadpool (`reco_redis_in_threads`)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    async def first_read(self, *args: Any) -> FirstRead:
        return await run_in_threadpool(self.store.first_read, *args)

    async def second_read(self, *args: Any) -> SecondRead:
        return await run_in_threadpool(self.store.second_read, *args)

    async def item_lists(self, *args: Any) -> Any:
        return await run_in_threadpool(self.store.item_lists, *args)


@dataclass(frozen=True)
class Answer:
    body: bytes
    strategy: str
    cache_entry: bytes | None = None  # what to store under the cache key, if anything
    keep_ttl: bool = False  # a re-stamped entry: it keeps its expiry (and is not recreated)


class Similar(NamedTuple):
    items: list[dict]
    model_versions: dict[str, str]
    strategy: str  # "similar", or "fallback" when the feature store is unreachable


class RecoService:
    def __init__(self, settings: Settings, store: FeatureStore, signals: GlobalSignals) -> None:
        self.settings = settings
        self.store = store
        self.signals = signals
        self.config = RankConfig.from_settings(settings)
        self.ranking_key = ranking_key(self.config, settings.seen_max, settings.catalogue_only)
        self.with_cf = settings.w_cf > 0  # ALS's lists only matter with a CF weight
        self.with_seq = settings.w_seq > 0  # and SASRec's user lists with a seq weight
        self.unused_models = frozenset(model for model, used in ((ALS, self.with_cf),
                                                                  (SASREC, self.with_seq))
                                       if not used)
        self.io = ThreadReads(store) if settings.reco_redis_in_threads else AsyncReads(store)
        self.lists = ItemListCache(settings.reco_list_cache_items,
                                   settings.reco_coview_cache_ttl_s,
                                   settings.reco_offline_list_cache_ttl_s)
        # Users' ALS and SASRec lists apart, so that many users cannot evict the item lists.
        self.user_lists = ItemListCache(settings.reco_list_cache_items // 2,
                                        settings.reco_coview_cache_ttl_s,
                                        settings.reco_offline_list_cache_ttl_s)

    async def recommend(self, p: RecoParams) -> Answer:
        """The serving path: reads on the event loop (or in a thread, `reco_redis_in_threads`)."""
        if p.category is not None:
            self.signals.ask_category(p.category)
        try:
            first = await self.io.first_read(p.user_id, p.variant)
        except StoreUnavailable:
            return self.fallback(p)
        fingerprint = self.fingerprint(first)
        items = self.signals.items  # one snapshot for the whole request
        # A category the snapshot has not read yet (asked for the first time): its answer is
        # served but not cached, as the next refresh brings that category's own top items.
        cache = p.category is None or p.category in self.signals.categories
        # Nor before the first refresh: ranked from the popular snapshot saved on disk (a
        # start during a Redis outage), an answer would outlive the outage in the cache.
        cache = cache and self.signals.loaded
        hit = self._cached(p, first, fingerprint, items)
        if hit is not None:
            return hit
        plan = self._plan(p.user_id, first, items)
        try:
            second = await self.io.second_read(p.user_id, plan.sources, plan.missing)
        except StoreUnavailable:
            return self.fallback(p)
        features = self._features(first, plan, second, items)
        answer = self._answer(p, first, fingerprint, features, items)
        return answer if cache else dataclasses.replace(answer, cache_entry=None)

    def served_versions(self, first: FirstRead) -> dict[str, str]:
        """The published models this service ranks with: ALS only with a CF weight and SASRec
        only with a seq weight, so that their retraining neither shows in responses nor
        empties the cache."""
        if not self.unused_models:
            return first.versions
        return {model: v for model, v in first.versions.items()
                if model not in self.unused_models}

    def fingerprint(self, first: FirstRead) -> str:
        """What a cache entry must have been made with: this recent list, this ranking."""
        return _fingerprint(first, self.ranking_key)

    def _cached(self, p: RecoParams, first: FirstRead, fingerprint: str,
                items: ItemIndex) -> Answer | None:
        """The cached response if it was made with the user's current recent list and the
        active model versions, and its items are all still eligible; None (a miss) otherwise."""
        entry = CacheEntry.parse(first.cached)
        # Any new event changes the recent list; a model switch changes versions.
        if (entry is None or entry.fingerprint != fingerprint
                or entry.versions != _versions_sig(self.served_versions(first))):
            metrics.CACHE_MISSES.inc()
            return None
        catalog = _catalog_sig(items)
        if entry.catalog == catalog:
            metrics.CACHE_HITS.inc()
            return Answer(entry.body.encode(), "cached")
        # A catalogue upsert since (a sold-out item, a new price) is checked against the
        # entry's items only: re-ranking for every upsert would empty the cache. An entry still
        # eligible is re-stamped forward, so its next hits skip this.
        if not _still_eligible(entry, p, items):
            metrics.CACHE_INELIGIBLE.inc()
            metrics.CACHE_MISSES.inc()
            return None
        metrics.CACHE_HITS.inc()
        if not _is_newer(catalog, entry.catalog):
            return Answer(entry.body.encode(), "cached")
        return Answer(entry.body.encode(), "cached", entry._replace(catalog=catalog).dump(),
                      keep_ttl=True)

    def _answer(self, p: RecoParams, first: FirstRead, fingerprint: str,
                features: UserFeatures, items: ItemIndex) -> Answer:
        """The ranked response, and its cache entry stamped with the recent list, model
        versions and catalogue version it saw."""
        ranking = rank(features, items, self.config, p.filters, p.k, p.explain)
        versions = self.served_versions(first)
        # A popular answer ranked with no model's list: it names none (its cache entry still
        # does, so that a model switch, which may give the user lists, is a miss).
        shown = versions if ranking.strategy != "popular" else {}
        body = render(p, ranking.strategy, ranking.items, shown, p.explain)
        cached = (body[: -len(CACHED_FALSE)] + CACHED_TRUE).decode()
        entry = CacheEntry(fingerprint, _catalog_sig(items),
                           _per_category(p, self.config.max_category_share, ranking),
                           _versions_sig(versions), cached)
        return Answer(body, ranking.strategy, entry.dump())

    def rank_uncached(self, p: RecoParams, config: RankConfig) -> Ranking:
        """The personalised path with other weights and no response cache: how the demo and
        offline comparisons score each signal alone on the live features."""
        items = self.signals.items
        first = self.store.first_read(p.user_id, p.variant)
        plan = self._plan(p.user_id, first, items)
        second = self.store.second_read(p.user_id, plan.sources, plan.missing)
        return rank(self._features(first, plan, second, items), items, config, p.filters, p.k)

    def _plan(self, user_id: str, first: FirstRead, items: ItemIndex) -> _Plan:
        """Which lists round 2 must read: those not already parsed in process."""
        sources = first.recent[: self.config.recent_n]
        knn_v = first.versions.get(ITEM2VEC)
        als_v = first.versions.get(ALS) if self.with_cf else None
        wanted = []
        for item in sources:
            wanted.append(ListKey("coview", item, ""))
            if knn_v:
                wanted.append(ListKey("knn", item, knn_v))
            if als_v:
                wanted.append(ListKey("item_cf", item, als_v))
        clock = time.monotonic()
        have = {key: self.lists.get(key, items, clock) for key in wanted}
        seq_v = first.versions.get(SASREC) if self.with_seq else None
        for kind, version in (("user_cf", als_v), ("user_seq", seq_v)):
            if version:
                key = ListKey(kind, user_id, version)
                have[key] = self.user_lists.get(key, items, clock)
        missing = [key for key, value in have.items() if value is None]
        return _Plan(sources, have, missing, clock)

    def _features(self, first: FirstRead, plan: _Plan, second: SecondRead,
                  items: ItemIndex) -> UserFeatures:
        have = plan.have
        for key, lists in second.lists.items():
            if key.kind in USER_KINDS:
                ids, scores, codes = lists
                have[key] = self.user_lists.put(key, (ids, scores), items, plan.clock,
                                                self._model_rows(key, codes, items))
            else:
                have[key] = self.lists.put(key, lists, items, plan.clock)
        features = UserFeatures(first.recent, second.times, time.time(), seen=second.seen)
        tables = {"coview": features.coview, "knn": features.knn, "item_cf": features.item_cf}
        for key, value in have.items():
            if key.kind == "user_cf":
                features.user_cf = value
            elif key.kind == "user_seq":
                features.user_seq = value
            else:
                tables[key.kind][key.item_id] = value
        return features

    def _model_rows(self, key: ListKey, codes: np.ndarray | None,
                    items: ItemIndex) -> np.ndarray | None:
        """Rows of a user's list from its model's item numbers, when the list has them and the
        model's item list is mapped for `items` (else None: the cache maps the ids)."""
        if codes is None:
            return None
        mapped = self.signals.model_rows.get(MODEL_OF_KIND[key.kind])
        if mapped is None or mapped.version != key.version:
            return None
        return mapped.take(codes, items)

    def fallback(self, p: RecoParams) -> Answer:
        """Popular items from the in-process snapshot: the shop still gets a list."""
        metrics.FALLBACKS.labels(endpoint="recommendations").inc()
        log.warning("serving fallback recommendations to user %s", pseudonym(p.user_id))
        ranking = rank(UserFeatures([], {}, time.time()), self.signals.items, self.config,
                       p.filters, p.k, p.explain)
        return Answer(render(p, "fallback", ranking.items, {}, p.explain), "fallback")

    def popular(self, k: int, category: str | None, exclude: str | None = None) -> list[dict]:
        """Top popular items (in stock, optional category, not `exclude`), score relative to
        the global top."""
        if category is not None:
            self.signals.ask_category(category)
        items = self.signals.items
        top = float(items.popularity[items.popular_rows[0]]) if len(items.popular_rows) else 0.0
        found = popular_items(items, Filters(category=category), k + (exclude is not None))
        return [{"item_id": item, "score": round(score / top, 6) if top > 0 else 0.0}
                for item, score in found if item != exclude][:k]

    async def similar(self, item_id: str, k: int) -> Similar:
        """Neighbours of `item_id` from co-view and embeddings; with the store unreachable,
        popular items other than `item_id` (strategy "fallback")."""
        try:
            coview, knn, versions = await self.io.item_lists(item_id)
        except StoreUnavailable:
            metrics.FALLBACKS.labels(endpoint="similar").inc()
            return Similar(self.popular(k, None, exclude=item_id), {}, "fallback")
        items = similar_items(item_id, coview, knn, self.signals.items, self.config, k,
                              self.store.similar_n)
        # Only Item2Vec's version: co-view is no published model, and ALS and SASRec are not read.
        used = {ITEM2VEC: versions[ITEM2VEC]} if ITEM2VEC in versions else {}
        return Similar([_item_json(i, explain=False) for i in items], used, "similar")


def render(p: RecoParams, strategy: str, items: list[ScoredItem], versions: dict[str, str],
           explain: bool) -> bytes:
    """Response bytes; "cached" is the last key so a cache entry can flip it without parsing."""
    return orjson.dumps({
        "user_id": p.user_id, "strategy": strategy,
        "items": ([_item_json(i, explain) for i in items] if explain else
                  [{"item_id": i.item_id, "score": round(i.score, 6)} for i in items]),
        "model_versions": versions, "cached": False,
    })


def _item_json(item: ScoredItem, explain: bool) -> dict:
    out: dict = {"item_id": item.item_id, "score": round(item.score, 6)}
    if explain:
        out["reasons"] = {
            "signals": {name: round(v, 6) for name, v in item.contributions.items()},
            "source_item": item.source_item,
            "because": _because(item),
        }
    return out


def _because(item: ScoredItem) -> str:
    if item.source_item:
        return f"because you viewed {item.source_item}"
    signals = item.contributions
    # No recent item led to it: the user's own model lists (ALS, SASRec) or popularity did.
    if max(signals.get("cf", 0.0), signals.get("seq", 0.0)) > signals.get("popularity", 0.0):
        return "picked for you from your history"
    if signals.get("popularity", 0.0) > 0.0:
        return "popular right now"
    # The filler after the popular items: newest first, but not always new (items past the
    # popular snapshot, or without a creation time), so it is not called new.
    return "more from the catalogue"
