"""Synthetic catalogue and users: the static side of the synthetic data set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reco.data.schema import ITEMS_FILE, ITEMS_SCHEMA, USERS_FILE, write_table

if TYPE_CHECKING:
    from reco.data.synthetic import SyntheticConfig

CATEGORY_NAMES = (
    "electronics", "phones", "computers", "audio", "cameras", "books", "toys", "games",
    "kitchen", "home", "garden", "tools", "sports", "outdoor", "fashion", "shoes", "jewelry",
    "beauty", "health", "grocery", "pets", "baby", "automotive", "office",
)
# A taste group's affinity to its 1st, 2nd and 3rd category.
PREFERENCE_WEIGHTS = np.array([0.6, 0.3, 0.1])
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("taste_group", pa.int32(), nullable=False),
        pa.field("preferred_categories", pa.list_(pa.string()), nullable=False),
    ]
)


def category_names(n: int) -> list[str]:
    return [CATEGORY_NAMES[i] if i < len(CATEGORY_NAMES) else f"category-{i}" for i in range(n)]


def _ids(prefix: str, n: int) -> pa.StringArray:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


@dataclass
class Catalogue:
    ids: pa.StringArray
    categories: list[str]
    category: np.ndarray  # category index per item
    price: np.ndarray
    in_stock: np.ndarray
    created_at: np.ndarray
    brand: np.ndarray
    # Items ordered by (category, popularity rank); key = category + in-category CDF.
    order: np.ndarray
    keys: np.ndarray
    top: np.ndarray  # best-selling item per category

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    def sample(self, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity within the given categories (u uniform in [0, 1))."""
        return self.order[np.searchsorted(self.keys, category + u, side="right")]


@dataclass
class Users:
    ids: pa.StringArray
    group: np.ndarray
    group_categories: np.ndarray  # (groups, 3) category indices
    activity_cdf: np.ndarray
    preference_cdf: np.ndarray


def make_catalogue(cfg: SyntheticConfig) -> Catalogue:
    rng = cfg.rng(1)
    n, n_cat = cfg.items, min(cfg.categories, cfg.items)
    sizes = rng.dirichlet(np.full(n_cat, 2.0))
    # Every category gets at least one item, the rest by uneven category sizes.
    category = rng.permutation(np.concatenate([np.arange(n_cat), rng.choice(n_cat, n - n_cat,
                                                                             p=sizes)]))
    # Popularity rank inside the category: random order, weight 1/(rank+1)^a (Zipf-like).
    noise = rng.random(n)
    order = np.lexsort((noise, category))
    first = np.searchsorted(category[order], np.arange(n_cat))
    rank = np.arange(n) - np.repeat(first, np.diff(np.append(first, n)))
    weight = 1.0 / (rank + 1.0) ** cfg.zipf_a
    cum = np.cumsum(weight)
    cat_total = np.add.reduceat(weight, first)
    cat_before = np.repeat(np.concatenate([[0.0], np.cumsum(cat_total)[:-1]]), np.diff(
        np.append(first, n)))
    within = (cum - cat_before) / np.repeat(cat_total, np.diff(np.append(first, n)))
    within[np.append(first[1:] - 1, n - 1)] = 1.0  # exact top of each category
    keys = category[order] + within

    mu = rng.uniform(np.log(8.0), np.log(300.0), n_cat)
    sigma = rng.uniform(0.3, 0.8, n_cat)
    price = np.maximum(0.99, np.round(np.exp(mu[category] + sigma[category] * rng.normal(size=n)),
                                      2))
    top = np.zeros(n, bool)
    top[order[first]] = True  # each category's best seller: in stock and long established
    in_stock = (rng.random(n) >= cfg.out_of_stock) | top
    arrival = (rng.random(n) < cfg.new_arrivals) & ~top
    old = cfg.start_ms - (rng.random(n) * 365 * 86_400_000).astype(np.int64)
    new = cfg.start_ms + (rng.random(n) * (cfg.end_ms - cfg.start_ms)).astype(np.int64)
    created_at = np.where(arrival, new, old)
    brand = rng.integers(0, 50, n)
    return Catalogue(_ids("item-", n), category_names(n_cat), category, price, in_stock,
                     created_at, brand, order, keys, order[first])


def make_users(cfg: SyntheticConfig, catalogue: Catalogue) -> Users:
    rng = cfg.rng(2)
    n_cat = catalogue.n_categories
    perm = rng.permutation(n_cat)
    width = len(PREFERENCE_WEIGHTS)
    group_categories = perm[(np.arange(cfg.groups)[:, None] * width + np.arange(width)) % n_cat]
    group = rng.integers(0, cfg.groups, cfg.users)
    activity = np.cumsum(rng.lognormal(0.0, 1.0, cfg.users))
    activity_cdf = activity / activity[-1]
    activity_cdf[-1] = 1.0
    pref = np.cumsum(PREFERENCE_WEIGHTS)
    pref[-1] = 1.0
    return Users(_ids("user-", cfg.users), group, group_categories, activity_cdf, pref)


def write_catalogue(cat: Catalogue, out_dir: Path) -> Path:
    names = np.array(cat.categories, dtype=object)[cat.category]
    titles = [f"{c.capitalize()} product {i}" for i, c in enumerate(names)]
    attributes = [json.dumps({"brand": f"brand-{b}"}) for b in cat.brand]
    table = pa.table(
        {
            "item_id": cat.ids, "title": titles, "category": names.tolist(), "price": cat.price,
            "in_stock": cat.in_stock, "created_at": cat.created_at, "attributes": attributes,
        }
    )
    return write_table(table, out_dir / ITEMS_FILE, ITEMS_SCHEMA)


def write_users(users: Users, cat: Catalogue, out_dir: Path) -> Path:
    names = np.array(cat.categories, dtype=object)
    table = pa.table(
        {
            "user_id": users.ids,
            "taste_group": users.group.astype(np.int32),
            "preferred_categories": [names[users.group_categories[g]].tolist()
                                     for g in users.group],
        }
    )
    return write_table(table, out_dir / USERS_FILE, USERS_SCHEMA)
