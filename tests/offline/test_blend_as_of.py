"""The blend evaluation ranks each user with co-view and popularity as of their held-out event
(spark_jobs/blend.py, spark_jobs/blend_replay.py)."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reco.catalog import ItemIndex
from reco.features import FeatureParams, plan_batch
from reco.ranking import RankConfig
from spark_jobs import blend
from spark_jobs import extract as ex
from spark_jobs.blend_replay import AsOfFeatures, reordered
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


# AsOfFeatures on its own, against a replay of each window alone.
_Ev = namedtuple("_Ev", "user_id item_id event_type timestamp_s event_id")
# Half-lives of a minute and events on whole minutes after the landmark: every affinity and
# popularity increment is a power of two, so every sum is exact whatever the order of additions.
MINUTE_PARAMS = FeatureParams(event_weights={"view": 1.0}, landmark_s=T0, half_life_s=60.0,
                              coview_half_life_s=60.0)


def as_of_features(events: list[_Ev], held: list[tuple[float, str]], params: FeatureParams,
                   replay_s: float, coview_max: int, items: list[str]
                   ) -> tuple[AsOfFeatures, dict[str, tuple[dict, dict]]]:
    """Each held-out event's co-view lists (item -> [(partner, score)]) and popularity
    (item -> score, popular items only), read in `order` as `blend.rankings` does."""
    frame = pd.DataFrame(events).rename(columns={"timestamp_s": "ts"})
    as_of = AsOfFeatures(frame, np.array([t for t, _ in held]), [i for _, i in held],
                         ItemIndex.build({item: {} for item in items}), params, replay_s,
                         coview_max)
    out = {}
    for n in as_of.order.tolist():
        index = as_of.at(n)
        coview = {item: list(zip(ids, scores.tolist(), strict=True))
                  for item, (ids, scores) in as_of.coview(items).items()}
        out[held[n][1]] = (coview, {index.ids[r]: float(index.popularity[r])
                                    for r in index.popular_rows.tolist()})
    return as_of, out


def replayed(events: list[_Ev], held_t: float, held_id: str, params: FeatureParams,
             replay_s: float, coview_max: int) -> tuple[dict, dict]:
    """The same from one `plan_batch` over the window alone (the training events before the
    held-out one in event order, from `replay_s` before it), users' recent items from a replay
    of every event before the window."""
    before = sorted((e for e in events if (e.timestamp_s, e.event_id) < (held_t, held_id)),
                    key=lambda e: (e.timestamp_s, e.event_id))
    start = held_t - replay_s
    recent = plan_batch([e for e in before if e.timestamp_s < start], {}, {}, params,
                        held_t).recent
    up = plan_batch([e for e in before if e.timestamp_s >= start], recent, {}, params, held_t)
    coview = {item: sorted(partners.items(), key=lambda ps: (ps[1], ps[0]),
                           reverse=True)[:coview_max] for item, partners in up.coview.items()}
    return coview, dict(up.popularity)


def minute_events(rows: list[tuple[str, str, int, str]]) -> list[_Ev]:
    return [_Ev(user, item, "view", T0 + 60 * minute, event_id)
            for user, item, minute, event_id in rows]


def test_pairs_and_items_leave_with_the_chunks_of_an_earlier_window() -> None:
    """h1's window starts 3 minutes after h0's: what only h0's window had (b-x, d-e, the first
    a-b co-view) is gone at h1, exactly as in a replay of h1's window alone."""
    events = minute_events([
        ("v0", "a", 4, "e01"),  # before both windows: partner of v0's later views only
        ("u0", "a", 5, "e02"), ("v4", "x", 5, "e03"),
        ("v0", "b", 6, "e04"),  # a-b 2**6
        ("v3", "d", 6, "e05"), ("v1", "a", 7, "e06"),
        ("v3", "e", 7, "e07"),  # d-e 2**7
        ("v4", "b", 7, "e08"),  # b-x 2**7
        ("v1", "c", 8, "e09"),  # a-c 2**8, in both windows
        ("v2", "b", 9, "e10"),
        # h0's second: after it by event id, so in h1's window only.
        ("v5", "y", 10, "y0"), ("v5", "z", 10, "z0"),  # y-z 2**10
        ("v2", "a", 11, "e11"),  # a-b 2**11
        ("v5", "w", 11, "e12"),  # w-z, w-y 2**11 each: a tie, by partner id descending
        ("v0", "c", 12, "e13"),  # c-b, c-a 2**12 each (v0's b and a are within 30 minutes)
    ])
    held = [(T0 + 600, "h0"), (T0 + 780, "h1")]  # windows: minutes [5, 10) and [8, 13)
    items = ["a", "b", "c", "d", "e", "w", "x", "y", "z"]
    as_of, got = as_of_features(events, held, MINUTE_PARAMS, 300.0, 200, items)
    assert as_of.first_chunk > 0  # h1 dropped the chunks only h0's window had
    assert got["h0"] == (
        {"a": [("c", 256.0), ("b", 64.0)], "b": [("x", 128.0), ("a", 64.0)],
         "c": [("a", 256.0)], "d": [("e", 128.0)], "e": [("d", 128.0)], "x": [("b", 128.0)]},
        {"b": 704.0, "c": 256.0, "a": 160.0, "e": 128.0, "d": 64.0, "x": 32.0})
    assert got["h1"] == (
        {"a": [("c", 4352.0), ("b", 2048.0)], "b": [("c", 4096.0), ("a", 2048.0)],
         "c": [("a", 4352.0), ("b", 4096.0)], "w": [("z", 2048.0), ("y", 2048.0)],
         "y": [("w", 2048.0), ("z", 1024.0)], "z": [("w", 2048.0), ("y", 1024.0)]},
        {"c": 4352.0, "a": 2048.0, "w": 2048.0, "y": 1024.0, "z": 1024.0, "b": 512.0})
    for t, held_id in held:
        assert got[held_id] == replayed(events, t, held_id, MINUTE_PARAMS, 300.0, 200)


def test_partners_with_equal_increments_tie_whatever_left_the_window() -> None:
    """q's partners a and b got the same affinity from one view in h1's window; a also had an
    older one with q, which left the window. They tie, as in a replay of the window, and b
    comes first by id: a total over all chunks less its twin over the dropped ones would keep
    that older affinity's rounding."""
    events = [_Ev(u, item, "view", T0 + dt, f"e{n:02d}") for n, (u, item, dt) in enumerate([
        ("p", "q", 330.0), ("p", "a", 350.0),  # q-a 2**(350/60): no whole power of two
        ("r", "a", 700.0), ("r", "b", 710.0), ("r", "q", 720.0)])]  # q-a, q-b 2**12
    held = [(T0 + 400, "h0"), (T0 + 780, "h1")]
    as_of, got = as_of_features(events, held, MINUTE_PARAMS, 300.0, 200, ["q"])
    assert as_of.first_chunk > 0
    assert got["h0"][0] == {"q": [("a", 2 ** (350 / 60))]}
    assert got["h1"][0] == {"q": [("b", 4096.0), ("a", 4096.0)]}
    assert got["h1"][0]["q"] == replayed(events, T0 + 780, "h1", MINUTE_PARAMS, 300.0,
                                         200)[0]["q"]


@pytest.mark.parametrize("seed", range(5))
def test_co_view_and_popularity_equal_a_replay_of_each_window_alone(seed: int) -> None:
    """Random events (many in one second, ordered by id), windows overlapping and leaving
    chunks behind, partners coming and going, lists cut at 3 partners with ties: exactly the
    replay of each window."""
    rng = np.random.default_rng(seed)
    params = FeatureParams(event_weights={"view": 1.0, "cart": 3.0, "purchase": 5.0},
                           landmark_s=T0, half_life_s=1.0, coview_half_life_s=1.0,
                           coview_window_s=6.0, coview_recent_n=3, recent_max=5)
    items = [f"i{n:02d}" for n in range(20)]
    # Whole seconds after the landmark, half-lives of a second: sums of powers of two, exact.
    events = [_Ev(f"u{rng.integers(6)}", items[rng.integers(20)],
                  ("view", "view", "cart", "purchase")[rng.integers(4)],
                  T0 + float(rng.integers(40)), f"{rng.integers(16**6):06x}")
              for _ in range(300)]
    held = [(T0 + float(rng.integers(45)), f"{rng.integers(16**6):06x}") for _ in range(25)]
    as_of, got = as_of_features(events, held, params, 12.0, 3, items)
    assert as_of.first_chunk > 0
    cut = tied = 0
    for t, held_id in held:
        want = replayed(events, t, held_id, params, 12.0, 3)
        assert got[held_id] == want
        cut += sum(len(partners) == 3 for partners in want[0].values())
        tied += sum(len({s for _, s in ps}) < len(ps) for ps in want[0].values())
    assert cut and tied  # the test saw lists cut at coview_max and equal scores
