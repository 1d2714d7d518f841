"""One event order everywhere: timestamp ties are broken by the event id, never by the item id
or the rows' order, so the split's held-out items, the processor's recent lists and the batch
evaluation's recent items agree on data full of ties (MovieLens stamps a page with one second).
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pandas as pd

from reco.evaluation_split import leave_last_out, targets_of
from reco.event_order import newest_distinct, sort_events
from reco.features import FeatureParams, plan_batch

# Within each tie the event ids order the items neither as their ids nor as the rows do.
TIES = pd.DataFrame(
    [
        # a: a page of four at 20 s, then three at 30 s: i8 (e33) is the test item, i7 (e32)
        # the validation one, where the item id would pick i9 both times.
        ("a", "i1", 10, "e10"), ("a", "i2", 20, "e24"), ("a", "i3", 20, "e21"),
        ("a", "i4", 20, "e23"), ("a", "i5", 20, "e22"), ("a", "i9", 30, "e31"),
        ("a", "i8", 30, "e33"), ("a", "i7", 30, "e32"),
        # b: j2 again in the last page, as its last event: held out, both its events leave.
        ("b", "j1", 5, "f5"), ("b", "j2", 5, "f1"), ("b", "j3", 8, "f2"), ("b", "j2", 8, "f9"),
        ("b", "j4", 8, "f4"),
        # c: k1 touched again in k2's second, after it by event id: k1 is the newest.
        ("c", "k1", 1, "g1"), ("c", "k2", 2, "g7"), ("c", "k1", 2, "g8"), ("c", "k3", 3, "g2"),
    ],
    columns=["user_id", "item_id", "timestamp", "event_id"],
).assign(timestamp=lambda f: f["timestamp"] * 1000, event_type="view")
# Held out by (timestamp, event id), and what the processor holds after the history's replay.
TEST = {"a": "i8", "b": "j2", "c": "k3"}
VALIDATION = {"a": "i7", "b": "j4", "c": "k1"}
RECENT = {"a": ["i7", "i9", "i2", "i4", "i5", "i3", "i1"], "b": ["j4", "j3", "j1"],
          "c": ["k1", "k2"]}

_Event = namedtuple("_Event", "user_id item_id event_type timestamp_s")


def shuffled(frame: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def processor_recent(history: pd.DataFrame) -> dict[str, list[str]]:
    """The processor's recent lists after the demo's replay of `history` in its file order."""
    params = FeatureParams(event_weights={"view": 1.0})
    events = (_Event(r.user_id, r.item_id, r.event_type, r.timestamp / 1000.0)
              for r in history.itertuples())
    return {u: s.items for u, s in plan_batch(events, {}, {}, params, now_s=0.0).recent.items()}


def test_sort_events_orders_ties_by_event_id_whatever_the_rows_order() -> None:
    for seed in range(5):
        ordered = sort_events(shuffled(TIES, seed), "timestamp", user_col="user_id")
        assert ordered[ordered.user_id == "a"]["item_id"].tolist() == [
            "i1", "i3", "i5", "i4", "i2", "i9", "i7", "i8"]
        newest = sort_events(shuffled(TIES, seed), "timestamp", newest_first=True)
        assert newest["event_id"].tolist()[:5] == ["e33", "e32", "e31", "e24", "e23"]


def test_split_holds_out_the_last_event_and_the_replay_puts_the_validation_item_first() -> None:
    split = leave_last_out(shuffled(TIES))
    assert targets_of(split.test) == TEST
    assert targets_of(split.validation) == VALIDATION
    # The demo replays the split's history file as it is: the processor's recent lists.
    recent = processor_recent(split.history)
    assert recent == RECENT
    assert {u: items[0] for u, items in recent.items()} == VALIDATION
    # The batch side rebuilds the same lists from the events, whatever their rows' order.
    rebuilt = newest_distinct(shuffled(split.history).assign(ts=lambda f: f.timestamp / 1000))
    assert rebuilt.groupby("user_id")["item_id"].agg(list).to_dict() == RECENT


def test_batch_evaluation_reads_the_processors_recent_items(tmp_path: Path) -> None:
    """EvalData.recent_rows (Item2Vec's query) and the blend's recent lists, from an extract
    whose training events are in no particular order, are the processor's lists."""
    from spark_jobs import extract as ex
    from spark_jobs.blend import user_histories
    from spark_jobs.evaluate import EvalData

    split = leave_last_out(TIES)
    train = shuffled(split.history.assign(ts=lambda f: f.timestamp / 1000.0), seed=3)
    train.to_parquet(tmp_path / ex.TRAIN_EVENTS)
    train.groupby(["user_id", "item_id"], as_index=False).size().rename(
        columns={"size": "confidence"}).to_parquet(tmp_path / ex.INTERACTIONS)
    split.test.assign(ts=lambda f: f.timestamp / 1000.0)[["user_id", "item_id", "ts"]].to_parquet(
        tmp_path / ex.HOLDOUT)

    data = EvalData(tmp_path)
    users, items = data.recent_rows(3)
    rows: dict[str, list[str]] = {}
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        rows.setdefault(str(data.user_ids[u]), []).append(str(data.item_ids[i]))
    assert rows == {u: items[:3] for u, items in RECENT.items()}

    seen, recent = user_histories(train, set(TEST), recent_max=3, seen_max=500)
    assert {u: set(items) for u, items in seen.items()} == {
        u: set(items) for u, items in RECENT.items()}
    # Bounded, the newest by last touch, ties by item id descending as Redis orders a sorted
    # set's equal scores (not the event order: a: i9 and i7 at 30 s, c: k1 and k2 at 2 s).
    bounded, _ = user_histories(train, set(TEST), recent_max=3, seen_max=2)
    assert bounded == {"a": ["i9", "i7"], "b": ["j4", "j3"], "c": ["k2", "k1"]}
    assert {u: items for u, (items, _) in recent.items()} == {u: r[:3] for u, r in RECENT.items()}
    assert recent["a"][1] == [30.0, 30.0, 20.0]
