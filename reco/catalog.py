"""The item universe ranking works in: every known item's row, metadata and popularity.

Ranking maps each candidate id to a row once and then works on numpy arrays indexed by row,
so per-request Python work is one dict lookup per neighbour-list entry. The online API builds
this from Redis in the background; offline evaluation builds it from training data with
`ItemIndex.build`, so both rank with the same structures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, Literal

import numpy as np

UNKNOWN_CATEGORY = -1
# Whether items without catalogue metadata may be recommended: "auto" (no, once the
# catalogue holds an item), "true" (never), "false" (always: deployments without a catalogue).
CatalogueOnly = Literal["auto", "true", "false"]
_spaces = itertools.count(1)


@dataclass(frozen=True)
class ItemIndex:
    """Arrays by row; one extra last row describes unknown items (no category/price; in stock
    only while `catalogue_only` does not apply, see `catalogue_only_applies`)."""

    ids: list[str]  # row -> item id (length n)
    row: dict[str, int]  # item id -> row
    category: np.ndarray  # int32 codes into `categories` (length n + 1)
    price: np.ndarray  # float64, NaN unknown
    in_stock: np.ndarray  # bool: may be shown (False for rows without metadata in catalogue-only)
    created_at: np.ndarray  # float64 epoch seconds, NaN unknown
    popularity: np.ndarray  # float64 time-decayed score, 0 outside the popular snapshot
    popular_rows: np.ndarray  # rows with popularity > 0, most popular first
    categories: list[str] = field(default_factory=list)
    category_code: dict[str, int] = field(default_factory=dict)
    version: str = ""
    # Row-space id: rows keep their meaning across `with_popularity` (which only appends rows),
    # so lists mapped to rows once stay valid while `space` is unchanged.
    space: int = 0
    # Rows given a catalogue record (`build`, `with_metadata`); the unknown row is never one.
    listed: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=bool))
    catalogue_only: CatalogueOnly = "auto"
    # Filtered popular rows per filter tuple: the popular filler costs no work per request.
    _filler: dict = field(default_factory=dict, compare=False, repr=False)
    # Per metadata version (shared by copies that only change popularity or append rows):
    # the catalogue rows newest first, for the new-arrivals filler.
    _by_age: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def unknown_row(self) -> int:
        return len(self.ids)

    @property
    def catalogue_only_applies(self) -> bool:
        """Whether rows without catalogue metadata are ineligible (see `CatalogueOnly`)."""
        if self.catalogue_only == "auto":
            return bool(self.listed[:-1].any())
        return self.catalogue_only == "true"

    @classmethod
    def empty(cls, catalogue_only: CatalogueOnly = "auto") -> ItemIndex:
        return cls.build({}, catalogue_only=catalogue_only)

    @classmethod
    def build(cls, records: Mapping[str, Mapping[str, Any]],
              popularity: Iterable[tuple[str, float]] = (), version: str = "",
              catalogue_only: CatalogueOnly = "auto") -> ItemIndex:
        """From `item_id -> {category, price, in_stock, created_at}` (Redis hash strings ok;
        an empty record still makes the item a catalogue item) and `(item_id, popularity)`
        pairs; popular items without metadata get rows too (eligible per `catalogue_only`)."""
        n = len(records)
        ids = list(records)
        index = cls(ids, {item: r for r, item in enumerate(ids)},
                    np.full(n + 1, UNKNOWN_CATEGORY, dtype=np.int32), np.full(n + 1, np.nan),
                    np.ones(n + 1, dtype=bool), np.full(n + 1, np.nan), np.zeros(n + 1),
                    np.zeros(0, dtype=np.int64), [], {}, version, next(_spaces),
                    np.r_[np.ones(n, dtype=bool), False], catalogue_only)
        index._write_meta(range(n), records.values())
        index._apply_catalogue_only()
        pairs = list(popularity)
        return index.with_popularity([p[0] for p in pairs], [p[1] for p in pairs])

    def with_popularity(self, ids: Sequence[str], scores: Sequence[float] | np.ndarray
                        ) -> ItemIndex:
        """A copy sharing the metadata, with a new popularity snapshot; popular items the
        catalogue lacks are appended as rows (existing rows never move)."""
        scores = np.asarray(scores, dtype=np.float64)
        rows = self.rows(ids)
        unknown = np.flatnonzero(rows == self.unknown_row).tolist()
        base = self._with_rows([ids[j] for j in unknown])
        pop = np.zeros(len(base.ids) + 1)
        if base is not self:
            rows = base.rows(ids)
        rows, scores = first_sightings(rows, scores, len(pop))
        pop[rows] = scores
        popular = rows[np.argsort(-scores, kind="stable")]
        return replace(base, popularity=pop, popular_rows=popular[pop[popular] > 0], _filler={})

    def with_row_popularity(self, popularity: np.ndarray,
                            popular_rows: np.ndarray | None = None) -> ItemIndex:
        """A copy with this popularity by row (float64, `len(ids) + 1` long, the unknown row's
        0; the copy takes the array): `with_popularity` without the id lookups, for offline
        replays that change the snapshot for every ranked user. `popular_rows`: the rows > 0,
        most popular first, equal ones by row descending (sorted here when not given), the
        order the API's snapshot has when rows are in id order (Redis orders equal scores by
        member, descending)."""
        if popular_rows is None:
            positive = np.flatnonzero(popularity[:-1] > 0)
            popular_rows = positive[np.lexsort((-positive, -popularity[positive]))]
        return replace(self, popularity=popularity, popular_rows=popular_rows, _filler={})

    def with_metadata(self, records: Mapping[str, Mapping[str, Any]], version: str = "",
                      removed: Sequence[str] = ()) -> ItemIndex:
        """A copy with these items' metadata replaced (same record form as `build`), in the
        same row space: known items keep their rows, others are appended as `with_popularity`
        appends them; the `removed` items (deleted from the catalogue) keep their rows as items
        without metadata, as a full reload would not list them. The popularity snapshot is
        kept; the filler cache starts empty (stock and categories decide eligibility). `self`
        is left as it was: requests still ranking with it keep a consistent snapshot."""
        base = self._with_rows(list(records))
        index = replace(base, category=base.category.copy(), price=base.price.copy(),
                        in_stock=base.in_stock.copy(), created_at=base.created_at.copy(),
                        categories=list(base.categories), listed=base.listed.copy(),
                        category_code=dict(base.category_code), version=version, _filler={},
                        _by_age={})
        rows = index.rows(list(records))
        index._write_meta(rows.tolist(), records.values())
        index.listed[rows] = True
        gone = index.rows([item for item in removed if item in index.row])
        index._write_meta(gone.tolist(), repeat({}, len(gone)))
        index.listed[gone] = False
        index._apply_catalogue_only()  # "auto": the first catalogue item turns it on
        return index

    def _apply_catalogue_only(self) -> None:
        """Rows without metadata (and the unknown row, which ids the index lacks share) may be
        shown only while catalogue-only does not apply: in place, on an index being built."""
        self.in_stock[~self.listed] = not self.catalogue_only_applies

    def newest_rows(self) -> np.ndarray:
        """Catalogue rows, newest first (unknown creation times last, then by row); computed
        once per metadata version (~10 ms for 100,000 items: call it off the request path)."""
        rows = self._by_age.get("newest")
        if rows is None:
            rows = newest_first(np.flatnonzero(self.listed[:-1]), self.created_at)
            self._by_age["newest"] = rows
        return rows

    def _with_rows(self, extra: Sequence[str]) -> ItemIndex:
        """`self` with rows of unknown metadata and no popularity appended for the `extra` ids
        (duplicates once); `self` itself when there are none. Existing rows never move."""
        extra = [item for item in dict.fromkeys(extra) if item not in self.row]
        if not extra:
            return self
        n, grow = len(self.ids), len(extra)
        row = dict(self.row)
        row.update({item: n + j for j, item in enumerate(extra)})

        def widen(a: np.ndarray) -> np.ndarray:  # the unknown (last) row's value for new rows
            return np.concatenate([a[:n], np.repeat(a[n:], grow + 1)])

        return replace(self, ids=self.ids + extra, row=row, category=widen(self.category),
                       price=widen(self.price), in_stock=widen(self.in_stock),
                       created_at=widen(self.created_at), popularity=widen(self.popularity),
                       listed=widen(self.listed), _filler={})

    def _write_meta(self, rows: Iterable[int], metas: Iterable[Mapping[str, Any]]) -> None:
        """Parse records into these rows, in place: only for an index being built, never one
        requests may hold. Categories not seen yet get the next codes."""
        category, price, in_stock, created_at = (self.category, self.price, self.in_stock,
                                                 self.created_at)
        codes, names = self.category_code, self.categories
        for row, meta in zip(rows, metas, strict=True):
            cat = meta.get("category")
            code = UNKNOWN_CATEGORY
            if cat:
                code = codes.get(str(cat), -2)
                if code == -2:
                    code = codes[str(cat)] = len(names)
                    names.append(str(cat))
            category[row] = code
            price[row] = _to_float(meta.get("price"))
            stock = meta.get("in_stock")
            in_stock[row] = stock is None or str(stock) not in ("0", "false", "False")
            created_at[row] = _to_float(meta.get("created_at"))

    def with_lookup_order(self, first: Sequence[str]) -> ItemIndex:
        """The same index (rows unchanged) with the id -> row map rebuilt `first` ids first.

        Ids mapped per request (neighbour lists read for the first time, a user's ALS list, the
        recent items to exclude) are mostly popular items, and each lookup in a 100,000-entry
        dict costs several cache misses (~0.5-1 us per id measured here): its entry, the key
        string it compares and the row int it returns. Built with the popular ids first, those
        three sit close together for the ids looked up most (the ids are copied in that order
        too), which made cold lookups of ALS and recent lists 20-40% faster here.
        """
        n = len(self.ids)
        hot = self.rows(first)
        order = list(dict.fromkeys([*hot[hot < n].tolist(), *range(n)]))  # rows, popular first
        copies = [(self.ids[r] + " ")[:-1] for r in order]  # new str objects, in this order
        at = np.empty(n, dtype=np.int64)
        at[order] = np.arange(n)
        return replace(self, ids=[copies[j] for j in at.tolist()],
                       row=dict(zip(copies, order, strict=True)))

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item; unknown items get `unknown_row`."""
        n = len(item_ids)
        # map(dict.get, ids, repeat(default)) stays in C: ~3x faster than a generator.
        return np.fromiter(map(self.row.get, item_ids, repeat(len(self.ids), n)),
                           dtype=np.int64, count=n)

    def code_of(self, category: str | None) -> int | None:
        """Code of a category name; None when no category was asked; -2 when none matches."""
        if category is None:
            return None
        return self.category_code.get(category, -2)

    def filler(self, key: tuple, compute: Any, enough: Any = None) -> Any:
        """Cached `compute()` of the filler rows passing one filter tuple (bounded cache),
        recomputed when `enough(cached)` says the cached value falls short."""
        rows = self._filler.get(key)
        if rows is None or (enough is not None and not enough(rows)):
            if len(self._filler) > 1024:
                self._filler.clear()
            rows = self._filler[key] = compute()
        return rows


def first_sightings(rows: np.ndarray, scores: np.ndarray, size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`rows` (each < size) and their scores, each row kept where it first appears: a member
    read in chunks can be seen twice when it moved between chunks."""
    # Duplicates are found without sorting (the sort of 20,000 rows was most of this step's
    # ~5-10 ms, run on the event loop): each row's slot keeps one index that wrote it.
    slot = np.empty(size, dtype=np.int32)
    index = np.arange(len(rows), dtype=np.int32)
    slot[rows] = index
    if (slot[rows] != index).any():
        _, first = np.unique(rows, return_index=True)
        keep = np.sort(first)
        rows, scores = rows[keep], scores[keep]
    return rows, scores


def newest_first(rows: np.ndarray, created_at: np.ndarray) -> np.ndarray:
    """`rows` by creation time, newest first; unknown times (NaN) last, ties in row order."""
    return rows[np.argsort(-created_at[rows], kind="stable")]  # -NaN is NaN: argsort's last


def _to_float(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
