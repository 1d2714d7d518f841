"""The batch jobs' leave-last-out split (Spark) holds out what the API evaluation's does."""

from __future__ import annotations

from reco.evaluation_split import hold_out_last
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
