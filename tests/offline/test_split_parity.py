"""The batch jobs' leave-last-out split (Spark) holds out what the API evaluation's does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reco.evaluation_split import hold_out_last, leave_last_out
from spark_jobs.extract import split_leave_last_out
from tests.data.test_split import EVENTS


def test_spark_split_matches_the_evaluation_split(spark) -> None:
    events = EVENTS.rename(columns={"timestamp": "ts"}).astype({"ts": float})
    train, held = split_leave_last_out(spark.createDataFrame(events))
    want_held, want_train = hold_out_last(events, "user_id", "item_id", "ts")

    def rows(frame) -> list[tuple]:
        return sorted((r.user_id, r.item_id, float(r.ts)) for r in frame.itertuples())

    assert rows(held.toPandas()) == rows(want_held)
    assert rows(train.toPandas()) == rows(want_train)
    # The tied event (b, i9) stays in the history; the held-out item leaves it.
    assert ("b", "i9", 8.0) in rows(want_train)
    assert all(r[:2] != ("a", "i2") for r in rows(want_train))


def test_spark_jobs_order_timestamp_ties_as_the_split_and_the_processor(spark) -> None:
    """On data full of timestamp ties: the extract holds out the split's items, its sessions
    (Item2Vec, and tune_quality, which calls the same transform) follow the processor's replay
    order, and its interactions give SASRec sequences that end in the validation item, the
    recent list's head."""
    from spark_jobs import extract as ex
    from spark_jobs.sasrec import user_sequences
    from tests.offline.test_event_order import RECENT, TEST, TIES, VALIDATION, shuffled

    events = shuffled(TIES).assign(ts=lambda f: f.timestamp / 1000.0, weight=1.0).drop(
        columns="timestamp")
    train, held = ex.split_leave_last_out(spark.createDataFrame(events))
    assert dict(held.select("user_id", "item_id").collect()) == TEST
    # With its event id: the blend evaluation places it among the training events.
    assert dict(held.select("user_id", "event_id").collect()) == {"a": "e33", "b": "f9",
                                                                 "c": "g2"}

    # One session per user (a gap longer than the data): the user's items in event order.
    in_order = {"a": ["i1", "i3", "i5", "i4", "i2", "i9", "i7"], "b": ["j1", "j3", "j4"],
                "c": ["k1", "k2", "k1"]}
    got = {r.user_id: list(r["items"]) for r in ex.sessions(train, gap_s=1e6).collect()}
    assert got == in_order

    inter = ex.interactions(train, now_s=40.0, half_life_s=1e6).toPandas()
    users, items, seqs = user_sequences(inter)
    by_user = {u: [items[c - 1] for c in s] for u, s in zip(users, seqs, strict=True)}
    assert by_user == {u: r[::-1] for u, r in RECENT.items()}
    assert {u: s[-1] for u, s in by_user.items()} == VALIDATION


def test_tuning_harness_trains_on_the_extracts_event_order(spark, tmp_path: Path) -> None:
    """benchmarks/tune_quality.py's models read the extract's own sessions and interactions of
    its training events: they need the event id (a harness without it stopped at the first
    sessions write), and a page's items come in event order."""
    from benchmarks import tune_quality as tq
    from reco.features import FeatureParams
    from tests.offline.test_event_order import TIES, shuffled

    events = shuffled(TIES).assign(ts=lambda f: f.timestamp / 1000.0)
    split = leave_last_out(events)
    items = pd.DataFrame({"item_id": sorted(set(TIES.item_id)), "category": "c", "price": 1.0,
                          "created_at": 0})
    val = tq.Split("validation", split.train, split.train, split.validation, items,
                   FeatureParams(event_weights={"view": 1.0}), tmp_path)

    sessions = pd.read_parquet(val.sessions(gap_s=1e6))
    # The validation and test items left the training events (c keeps k2 alone: no session).
    assert {u: list(s) for u, s in zip(sessions.user_id, sessions["items"], strict=True)} == {
        "a": ["i1", "i3", "i5", "i4", "i2", "i9"], "b": ["j1", "j3"]}
    interactions = pd.read_parquet(val.interactions(half_life_days=1e6))
    assert sorted(zip(interactions.user_id, interactions.item_id, strict=True)) == sorted(
        set(zip(split.train.user_id, split.train.item_id, strict=True)))
