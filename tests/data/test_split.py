"""Leave-last-out split and ranking metrics on hand-built data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reco.evaluation_split import (
    hit_rate_at_k,
    leave_last_out,
    mrr_at_k,
    ndcg_at_k,
    ranks_of,
    score_rankings,
    targets_of,
)

EVENTS = pd.DataFrame(
    [
        # a: plain history; the test item was seen before, so its earlier view leaves history
        ("a", "i1", 10, "e01"), ("a", "i2", 20, "e02"), ("a", "i3", 30, "e03"),
        ("a", "i4", 40, "e04"), ("a", "i2", 50, "e05"),
        # b: the last two share a timestamp (one MovieLens page): the larger event id, not the
        # larger item id, is held out; the other stays in the history as its validation item
        ("b", "i7", 5, "e06"), ("b", "i9", 8, "e07"), ("b", "i8", 8, "e08"),
        # c: a single event, not evaluable: kept for training
        ("c", "i1", 7, "e09"),
        # d: two events, evaluable, nothing left for validation
        ("d", "i5", 1, "e10"), ("d", "i6", 2, "e11"),
    ],
    columns=["user_id", "item_id", "timestamp", "event_id"],
).sample(frac=1.0, random_state=3)  # row order must not matter


def _rows(frame: pd.DataFrame) -> list[tuple[str, str, int]]:
    return sorted(map(tuple, frame[["user_id", "item_id", "timestamp"]].values.tolist()))


def test_leave_last_out_holds_out_exact_items() -> None:
    split = leave_last_out(EVENTS)
    assert targets_of(split.test) == {"a": "i2", "b": "i8", "d": "i6"}
    assert _rows(split.history) == [
        ("a", "i1", 10), ("a", "i3", 30), ("a", "i4", 40), ("b", "i7", 5), ("b", "i9", 8),
        ("c", "i1", 7), ("d", "i5", 1),
    ]
    assert targets_of(split.validation) == {"a": "i4", "b": "i9"}
    assert _rows(split.train) == [
        ("a", "i1", 10), ("a", "i3", 30), ("b", "i7", 5), ("c", "i1", 7), ("d", "i5", 1),
    ]
    assert split.test["timestamp"].tolist() == sorted(split.test["timestamp"])


def test_metrics_on_ranked_lists() -> None:
    ranked = {"a": ["x", "i2", "y"], "b": ["i9"], "d": ["p", "q", "r", "s"], "e": ["i1"]}
    targets = {"a": "i2", "b": "i9", "d": "i6", "z": "i1"}  # z has no list: a miss
    rank = ranks_of(ranked, targets)
    assert rank.tolist() == [2.0, 1.0, math.inf, math.inf]
    assert hit_rate_at_k(rank, 10) == 0.5
    assert hit_rate_at_k(rank, 1) == 0.25
    assert np.isclose(ndcg_at_k(rank, 10), (1 / math.log2(3) + 1.0) / 4)
    assert np.isclose(mrr_at_k(rank, 10), (0.5 + 1.0) / 4)
    assert score_rankings(ranked, targets, k=1) == {
        "hr_at_1": 0.25, "ndcg_at_1": 0.25, "mrr_at_1": 0.25, "users": 4}


def test_split_file_writes_the_four_parts(tmp_path) -> None:
    import pyarrow as pa

    from reco.data.schema import EVENTS_SCHEMA, write_table
    from reco.evaluation_split import split_file

    frame = EVENTS.assign(event_type="view", session_id=None)
    write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "events.parquet",
                EVENTS_SCHEMA)
    paths = split_file(tmp_path / "events.parquet", tmp_path / "split")
    test = pd.read_parquet(paths["test"])
    assert targets_of(test) == {"a": "i2", "b": "i8", "d": "i6"}
    assert len(pd.read_parquet(paths["history"])) == 7


def test_fetch_recommendations_collects_lists_and_errors() -> None:
    import asyncio

    import httpx

    from reco.evaluation_api import fetch_recommendations_async

    def handler(request: httpx.Request) -> httpx.Response:
        user, k = request.url.params["user_id"], int(request.url.params["k"])
        if user == "down":
            return httpx.Response(503)
        return httpx.Response(200, json={"items": [{"item_id": f"{user}-{n}", "score": 1.0}
                                                   for n in range(k)]})

    served = asyncio.run(fetch_recommendations_async(
        "http://reco", ["a", "b", "down"], k=2, transport=httpx.MockTransport(handler)))
    assert served.ranked == {"a": ["a-0", "a-1"], "b": ["b-0", "b-1"]}
    assert dict(served.errors) == {"HTTP 503": 1}
    assert score_rankings(served.ranked, {"a": "a-1", "b": "x", "down": "y"}, k=2)["hr_at_2"] \
        == 1 / 3


def test_metrics_match_the_batch_evaluation() -> None:
    """Served-list metrics and spark_jobs.evaluate must agree on the same ranks."""
    from spark_jobs.evaluate import metrics

    rank = np.array([1.0, 3.0, 10.0, 11.0, math.inf])
    batch = metrics(rank, np.zeros((len(rank), 1), np.int64), n_items=20, k=10)
    assert batch["hr_at_10"] == hit_rate_at_k(rank, 10)
    assert batch["ndcg_at_10"] == ndcg_at_k(rank, 10)
    assert batch["mrr_at_10"] == mrr_at_k(rank, 10)


def test_split_digest_names_the_data_scored_on() -> None:
    """The gate compares raw scores only between runs with the same digest."""
    from spark_jobs.evaluate import split_digest

    inter = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i1", "i2", "i1"],
                          "confidence": [1.0, 3.0, 1.0]})
    held = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["i3", "i2"]})
    digest = split_digest(inter, held)
    assert split_digest(inter.iloc[::-1], held.iloc[::-1]) == digest  # row order is not data
    more = pd.concat([inter, pd.DataFrame({"user_id": ["b"], "item_id": ["i3"],
                                           "confidence": [1.0]})])
    assert split_digest(more, held) != digest  # a new training event
    assert split_digest(inter, held.assign(item_id=["i3", "i4"])) != digest  # another held item
    # Confidences decay to the window's end: the same events later are the same split.
    assert split_digest(inter.assign(confidence=[0.5, 2.0, 0.9]), held) == digest
