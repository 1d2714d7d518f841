"""The blend evaluation ranks each user with co-view and popularity as of their held-out event
(spark_jobs/blend.py, spark_jobs/blend_replay.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reco.catalog import ItemIndex
from reco.features import FeatureParams
from reco.ranking import RankConfig
from spark_jobs import blend
from spark_jobs import extract as ex
from spark_jobs.blend_replay import reordered
from spark_jobs.evaluate import EvalData, evaluate_blend

T0 = 1_790_000_000.0  # the popularity landmark: forward decay neither overflows nor underflows
DAY = 86400.0
# (user, item, event type, seconds after T0, event id). u0 is held out on x at T0+1060 (h0)
# and u1 on x at T0+3060 (h1); x has no event before h0.
EVENTS = [
    ("o0", "a", "view", -8 * DAY, "e00"), ("o0", "y", "view", -8 * DAY + 60, "e01"),
    ("w0", "a", "view", 0, "e02"), ("w0", "b", "view", 60, "e03"),
    ("w1", "a", "view", 100, "e04"), ("w1", "b", "view", 160, "e05"),
    ("p0", "c", "view", 200, "e06"),
    ("u0", "a", "view", 1000, "e07"),
    # The second of u0's held-out event: q0's cart comes before it by event id, r0's purchase
    # after it.
    ("q0", "c", "cart", 1060, "a00"), ("r0", "x", "purchase", 1060, "z00"),
    *[(f"l{n}", item, "view", 2000 + 100 * n + dt, f"f{n}{item}")
      for n in range(5) for item, dt in (("a", 0), ("x", 60))],
    ("u1", "a", "view", 3000, "e08"),
]
HELD = [("u0", "x", 1060, "h0"), ("u1", "x", 3060, "h1")]


@pytest.fixture
def extract_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "extract"
    folder.mkdir()
    events = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "event_type", "ts",
                                           "event_id"]).assign(ts=lambda f: T0 + f["ts"])
    events.to_parquet(folder / ex.TRAIN_EVENTS)
    events.assign(confidence=1.0)[["user_id", "item_id", "confidence"]].to_parquet(
        folder / ex.INTERACTIONS)
    pd.DataFrame(HELD, columns=["user_id", "item_id", "ts", "event_id"]).assign(
        ts=lambda f: T0 + f["ts"]).to_parquet(folder / ex.HOLDOUT)
    items = np.array(["a", "b", "c", "x", "y"])
    np.savez(tmp_path / "model.npz", item_ids=items, nbr_idx=np.zeros((5, 1), np.int32),
             nbr_scores=np.full((5, 1), -np.inf, np.float32))  # no embedding neighbours
    return folder


def blend_args(model_dir: Path) -> dict:
    rank_config = RankConfig(w_coview=0.5, w_embed=0.0, w_pop=1.0, w_recency=0.0,
                             max_category_share=1.0, freshness_boost=0.0)
    params = FeatureParams(event_weights={"view": 1.0, "cart": 5.0, "purchase": 10.0})
    return {"model": "item2vec", "model_dir": model_dir, "k": 3,
            "rank_config": asdict(rank_config), "feature_params": asdict(params),
            "coview_max": 200, "replay_s": 7 * DAY}


def test_the_blend_ranks_each_user_with_the_events_before_their_held_out_one(extract_dir):
    """x had no event before u0's held-out one, and 5 co-views with a and a purchase after it:
    replayed up to the window's last event, they made x u0's first item (an HR@1 of 1.0)."""
    args = blend_args(extract_dir.parent)
    ranked = {user: (target, top) for user, target, top in
              blend.rankings(EvalData(extract_dir), **args)}
    # u0 at h0: a's co-view list is b's 2 views; popularity c 6 (p0's view, q0's cart), a 3,
    # b 2, so c 1.0, b 0.5 * 1 + 2/6; x, without popularity, fills the last place (by row,
    # before y: o0's views of a and y are older than the 7-day window).
    # u1 at h1: co-view x 5, b 2; popularity x 15 (r0's purchase, 5 views), c 6, b 2.
    assert ranked == {"u0": ("x", ["c", "b", "x"]), "u1": ("x", ["x", "c", "b"])}


def test_the_blend_metrics_count_the_ranks_as_of_each_held_out_event(extract_dir):
    """The same users through `evaluate_blend`: x 3rd for u0, 1st for u1 (it was 1st twice)."""
    args = blend_args(extract_dir.parent)
    result = evaluate_blend(EvalData(extract_dir), args["model"], args["model_dir"], args["k"],
                            args["rank_config"], args["feature_params"], args["coview_max"],
                            replay_s=args["replay_s"])["metrics"]
    assert result["users"] == 2 and result["hr_at_3"] == 1.0
    assert result["mrr_at_3"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["ndcg_at_3"] == pytest.approx((1 / np.log2(4) + 1) / 2)


def test_popular_rows_merged_in_are_the_rows_sorted_again() -> None:
    """The replay merges the rows whose popularity changed into the previous order; equal
    scores (many here) by row descending, as `ItemIndex.with_row_popularity` sorts them."""
    rng = np.random.default_rng(0)
    base = ItemIndex.build({f"i{n:03d}": {} for n in range(300)})
    pop = np.zeros(301)
    order = np.zeros(0, dtype=np.int64)
    for _ in range(200):
        changed = np.unique(rng.integers(0, 300, rng.integers(1, 40)))
        pop[changed] = rng.integers(0, 4, len(changed)) * 0.5  # 0 drops a row
        order = reordered(order, pop, changed)
        assert order.tolist() == base.with_row_popularity(pop.copy()).popular_rows.tolist()
