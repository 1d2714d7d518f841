"""Synthetic stream: schema, determinism, funnel, popularity and taste structure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from reco.data.catalogue import USERS_SCHEMA
from reco.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA
from reco.data.synthetic import SyntheticConfig, generate, uuid4_strings

# Small chunks so the cross-chunk carry (what keeps the file sorted) is exercised many times.
CFG = SyntheticConfig(users=400, items=300, events=40_000, seed=11, chunk_events=6_000)
FILES = ("events.parquet", "items.parquet", "users.parquet")


def _digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(CFG, out)
    return out


@pytest.fixture(scope="module")
def frames(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tuple(pd.read_parquet(data / f) for f in FILES)


def test_schema_and_counts(data: Path, frames) -> None:
    events, items, users = frames
    for name, schema in zip(FILES, (EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA), strict=True):
        assert pq.read_schema(data / name).remove_metadata() == schema
    assert (len(events), len(items), len(users)) == (40_000, 300, 400)
    assert events["event_id"].is_unique
    assert events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].min() >= CFG.start_ms
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["event_counts"] == events["event_type"].value_counts().to_dict()
    assert set(events["user_id"]) <= set(users["user_id"])
    assert set(events["item_id"]) <= set(items["item_id"])


def test_same_seed_same_bytes_other_seed_differs(data: Path, tmp_path: Path) -> None:
    generate(CFG, tmp_path / "again")
    assert _digest(tmp_path / "again") == _digest(data)
    other = SyntheticConfig(**{**CFG.__dict__, "seed": 12})
    generate(other, tmp_path / "other")
    digests = _digest(tmp_path / "other")
    assert all(digests[f] != _digest(data)[f] for f in FILES)


def test_funnel_shape(frames) -> None:
    events, items, _ = frames
    n = events["event_type"].value_counts()
    assert n["view"] > n["click"] > n["cart"] > n["purchase"] > 0
    assert 0.27 < n["click"] / n["view"] < 0.33
    assert 0.07 < n["cart"] / n["click"] < 0.13
    assert 0.20 < n["purchase"] / n["cart"] < 0.40
    # Each deeper step follows the previous one on the same item, later in the same session.
    steps = events.assign(t=events["timestamp"]).groupby(["session_id", "item_id", "event_type"])
    first = steps["t"].min().unstack()
    for before, after in (("view", "click"), ("click", "cart"), ("cart", "purchase")):
        has = first[after].notna()
        assert (first.loc[has, before] < first.loc[has, after]).all()
    in_stock = items.set_index("item_id")["in_stock"]
    assert in_stock[events.loc[events.event_type == "cart", "item_id"]].all()
    assert (~in_stock).sum() > 0


def test_sessions_move_forward_in_time(frames) -> None:
    events, items, _ = frames
    assert all((np.diff(g.to_numpy()) > 0).all()
               for _, g in events.groupby("session_id", sort=False)["timestamp"])
    created = items.set_index("item_id")["created_at"]
    assert (created[events["item_id"]].to_numpy() <= events["timestamp"].to_numpy()).all()
    assert (items["created_at"] >= CFG.start_ms).sum() > 0  # some new arrivals in the window


def test_popularity_is_skewed(frames) -> None:
    events, items, _ = frames
    views = events[events.event_type == "view"]["item_id"].value_counts()
    top = views.head(len(items) // 10).sum() / views.sum()
    assert top > 0.35  # uniform would give 0.10


def test_users_stay_in_their_taste(frames) -> None:
    events, items, users = frames
    category = items.set_index("item_id")["category"]
    preferred = users.set_index("user_id")["preferred_categories"]
    in_taste = [category[i] in preferred[u] for u, i in zip(events.user_id, events.item_id,
                                                            strict=True)]
    share = float(np.mean(in_taste))
    assert share > 0.8  # 3 of 20 categories: about 0.15 without taste groups
    # Different groups really differ: their most viewed categories are not the same.
    groups = users.set_index("user_id")["taste_group"]
    top = events.assign(g=groups[events.user_id].to_numpy(),
                        c=category[events.item_id].to_numpy()).groupby("g")["c"].agg(
        lambda s: s.value_counts().index[0])
    assert top.nunique() >= 4


def test_uuid4_strings_are_valid() -> None:
    import uuid

    ids = uuid4_strings(np.random.default_rng(1), 50).to_pylist()
    assert len(set(ids)) == 50
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
