"""In-memory views of slowly changing global signals ranking needs: item metadata, popularity.

Plain data (numpy arrays + an id -> row dict) so the online API (refreshed from Redis in the
background) and offline evaluation (built from training data) hand ranking the same structures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNKNOWN_CATEGORY = -1


@dataclass(frozen=True)
class ItemsMeta:
    """Metadata aligned with a list of items; unknown items: category -1, price/created NaN."""

    category: np.ndarray  # int32 codes into Catalog.categories
    price: np.ndarray  # float64
    in_stock: np.ndarray  # bool (unknown items count as in stock)
    created_at: np.ndarray  # float64 epoch seconds


@dataclass(frozen=True)
class Catalog:
    """Item metadata for business rules: category, price, stock, creation time."""

    index: dict[str, int]
    categories: list[str]
    category: np.ndarray
    price: np.ndarray
    in_stock: np.ndarray
    created_at: np.ndarray
    version: str = ""
    category_code: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Catalog:
        return cls.from_records({})

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping[str, Any]], version: str = "") -> Catalog:
        """From `item_id -> {category, price, in_stock, created_at}` (Redis hash strings ok)."""
        n = len(records)
        index: dict[str, int] = {}
        codes: dict[str, int] = {}
        category = np.full(n, UNKNOWN_CATEGORY, dtype=np.int32)
        price = np.full(n, np.nan)
        in_stock = np.ones(n, dtype=bool)
        created_at = np.full(n, np.nan)
        for row, (item_id, meta) in enumerate(records.items()):
            index[item_id] = row
            cat = meta.get("category")
            if cat:
                category[row] = codes.setdefault(str(cat), len(codes))
            price[row] = _to_float(meta.get("price"))
            stock = meta.get("in_stock")
            in_stock[row] = str(stock) not in ("0", "false", "False") if stock is not None else True
            created_at[row] = _to_float(meta.get("created_at"))
        return cls(index, list(codes), category, price, in_stock, created_at, version, codes)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item, -1 when the catalogue does not know it."""
        get = self.index.get
        return np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def lookup(self, item_ids: Sequence[str]) -> ItemsMeta:
        rows = self.rows(item_ids)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        if len(self.index) == 0:
            n = len(item_ids)
            return ItemsMeta(np.full(n, UNKNOWN_CATEGORY, dtype=np.int32), np.full(n, np.nan),
                             np.ones(n, dtype=bool), np.full(n, np.nan))
        return ItemsMeta(
            category=np.where(known, self.category[safe], UNKNOWN_CATEGORY).astype(np.int32),
            price=np.where(known, self.price[safe], np.nan),
            in_stock=np.where(known, self.in_stock[safe], True),
            created_at=np.where(known, self.created_at[safe], np.nan),
        )

    def code_of(self, category: str | None) -> int | None:
        """Code of a category name; None when no category was asked; -2 when none matches."""
        if category is None:
            return None
        return self.category_code.get(category, -2)


@dataclass
class Popularity:
    """Popular items best first with their (relative) scores."""

    ids: list[str]
    scores: np.ndarray
    index: dict[str, int] = field(default_factory=dict)
    # Metadata of `ids` per catalogue object, so filtering the popular list costs no lookups.
    _meta: tuple[Catalog, ItemsMeta] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {item: i for i, item in enumerate(self.ids)}

    @classmethod
    def empty(cls) -> Popularity:
        return cls([], np.zeros(0))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, float]]) -> Popularity:
        ordered = sorted(pairs, key=lambda p: -p[1])
        return cls([p[0] for p in ordered], np.array([p[1] for p in ordered], dtype=np.float64))

    def scores_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Score of each item; items outside the snapshot score 0."""
        if not self.ids:
            return np.zeros(len(item_ids))
        get = self.index.get
        pos = np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        return np.where(pos >= 0, self.scores[np.maximum(pos, 0)], 0.0)

    def meta(self, catalog: Catalog) -> ItemsMeta:
        if self._meta is None or self._meta[0] is not catalog:
            self._meta = (catalog, catalog.lookup(self.ids))
        return self._meta[1]


def _to_float(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
