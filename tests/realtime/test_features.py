"""The real-time feature algorithms (pure functions), with values computed by hand."""

from __future__ import annotations

import pytest

from reco.events import Event
from reco.features import (
    FeatureParams,
    RecentItems,
    coview_partners,
    forward_decayed,
    plan_batch,
    trending_bucket_start,
    trending_bucket_starts,
)

DAY = 86_400.0
L = 1_790_000_000.0
NOW = L + 10 * DAY
PARAMS = FeatureParams(
    event_weights={"view": 1.0, "click": 3.0, "cart": 5.0, "purchase": 10.0},
    recent_max=3, half_life_s=DAY, landmark_s=L, coview_recent_n=2, coview_window_s=600.0,
)


def ev(user: str, item: str, t_s: float, event_type: str = "view") -> Event:
    return Event(user_id=user, item_id=item, event_type=event_type, timestamp=int(t_s * 1000))


def test_popularity_forward_decay_ratios() -> None:
    now = forward_decayed(1.0, NOW, L, DAY)
    assert forward_decayed(1.0, NOW - DAY, L, DAY) / now == 0.5
    assert forward_decayed(10.0, NOW - 2 * DAY, L, DAY) / now == 2.5
    assert forward_decayed(1.0, L, L, DAY) == 1.0
    assert forward_decayed(1.0, L + 1001 * DAY, L, DAY) is None  # would near overflow


def test_recent_items_distinct_newest_first_and_bounded() -> None:
    state = RecentItems()
    for item, t in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("d", 5)]:
        state.touch(item, float(t), max_len=3)
    assert state.items == ["d", "c", "a"]
    assert state.times == {"d": 5.0, "c": 4.0, "a": 3.0}  # b trimmed from both


def test_late_events_take_their_place_by_time() -> None:
    """Events arrive out of time order (a backfill beside live traffic, a retry): the list
    stays newest first by time, as offline evaluation orders it."""
    state = RecentItems()
    for n in range(3):
        state.touch(f"live{n}", NOW + n, max_len=3)
    state.touch("live0", NOW - DAY, max_len=3)  # a day late: older than its own last touch
    assert state.items == ["live2", "live1", "live0"] and state.times["live0"] == NOW
    state.touch("late", NOW + 0.5, max_len=3)  # between live0 and live1
    assert state.items == ["live2", "live1", "late"] and "live0" not in state.times
    for n in range(3):  # last year's history, replayed now: older than every listed item
        state.touch(f"old{n}", NOW - 365 * DAY + n, max_len=3)
    assert state.items == ["live2", "live1", "late"]
    assert set(state.times) == {"live2", "live1", "late"}


def test_plan_batch_keeps_the_newest_items_when_a_backfill_follows_live_events() -> None:
    live = [ev("u1", f"i{n}", NOW + n) for n in range(3)]
    backfill = [ev("u1", f"old{n}", NOW - 365 * DAY + n) for n in range(3)]
    up = plan_batch([*live, *backfill], {}, {}, PARAMS, NOW + 10)
    assert up.recent["u1"].items == ["i2", "i1", "i0"]


def test_coview_partners_window_limit_and_self() -> None:
    recent = ["x", "a", "b", "c"]
    times = {"x": 100.0, "a": 90.0, "b": 80.0, "c": 10.0}
    assert coview_partners(recent, times, "x", 100.0, recent_n=2, window_s=50) == ["a", "b"]
    assert coview_partners(recent, times, "x", 100.0, recent_n=5, window_s=50) == ["a", "b"]
    assert coview_partners(recent, times, "x", 100.0, recent_n=5, window_s=90) == ["a", "b", "c"]
    assert coview_partners(recent, times, "y", 100.0, recent_n=1, window_s=90) == ["x"]


def test_trending_buckets_cover_the_window() -> None:
    assert trending_bucket_start(3_599.0, 60) == 3_540
    starts = trending_bucket_starts(7_230.0, window_s=3_600, bucket_s=60)
    assert starts[0] == 7_200 and starts[-1] == 3_660 and len(starts) == 60


def test_plan_batch_by_hand() -> None:
    t = NOW - 300
    before = {"u1": RecentItems(["old"], {"old": t - 700})}  # outside the 600 s window
    events = [
        ev("u1", "a", t), ev("u1", "b", t + 10, "click"), ev("u1", "a", t + 20),
        ev("u1", "c", t + 30, "purchase"), ev("u2", "a", t + 5), ev("u3", "z", NOW - 2 * 3600),
    ]
    up = plan_batch(events, before, {"a": "shoes", "c": None}, PARAMS, NOW)

    assert up.recent["u1"].items == ["c", "a", "b"]  # "old" trimmed (max 3)
    assert up.recent["u1"].times == {"c": t + 30, "a": t + 20, "b": t + 10}
    assert before["u1"].items == ["old"]  # input state untouched
    assert up.recent["u2"].items == ["a"]
    # b after a: a<->b; a again after b: b<->a; c after [a, b] (recent_n=2): c<->a, c<->b;
    # each pair's affinity forward-decayed from its event's time (30-day half-life).
    g = lambda ts: 2 ** ((ts - L) / (30 * DAY))  # noqa: E731
    ab, c = g(t + 10) + g(t + 20), g(t + 30)
    assert {k: dict(v) for k, v in up.coview.items()} == {
        "a": {"b": pytest.approx(ab, rel=1e-12), "c": pytest.approx(c, rel=1e-12)},
        "b": {"a": pytest.approx(ab, rel=1e-12), "c": pytest.approx(c, rel=1e-12)},
        "c": {"a": pytest.approx(c, rel=1e-12), "b": pytest.approx(c, rel=1e-12)}}
    f = lambda w, ts: w * 2 ** ((ts - L) / DAY)  # noqa: E731
    assert up.popularity["a"] == pytest.approx(f(1, t) + f(1, t + 20) + f(1, t + 5), rel=1e-12)
    assert up.popularity["c"] == pytest.approx(f(10, t + 30), rel=1e-12)
    assert dict(up.category_popularity) == {"shoes": {"a": up.popularity["a"]}}
    bucket = trending_bucket_start(t, 60)
    counted = {}
    for counts in up.trending.values():
        for item, n in counts.items():
            counted[item] = counted.get(item, 0) + n
    assert counted == {"a": 3.0, "b": 3.0, "c": 10.0}  # z is older than the trending window
    assert min(up.trending) == bucket


def test_touch_copes_with_a_list_and_hash_out_of_step() -> None:
    """The list and the hash are two Redis keys: one can lose an entry the other still has."""
    unlisted = RecentItems(["b"], {"a": 1.0, "b": 2.0})  # "a" left the list, not the hash
    unlisted.touch("a", 3.0, max_len=3)
    assert (unlisted.items, unlisted.times) == (["a", "b"], {"a": 3.0, "b": 2.0})
    untimed = RecentItems(["a", "b"], {"b": 2.0})  # "a" left the hash, not the list
    untimed.touch("a", 3.0, max_len=3)
    assert (untimed.items, untimed.times) == (["a", "b"], {"a": 3.0, "b": 2.0})


def test_loaded_state_drops_duplicates_and_unlisted_times() -> None:
    state = RecentItems.loaded(["a", "b", "a", "c"], {"a": 3.0, "c": 1.0, "z": 9.0})
    assert state.items == ["a", "b", "c"]  # the newest copy kept
    assert state.times == {"a": 3.0, "c": 1.0}
