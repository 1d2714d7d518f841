"""Every model on each of its engines, end to end on small structured data, asserting results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reco import keys, neighbours
from spark_jobs import pipeline, tracking
from tests.offline import synthetic

# Small but learnable: enough epochs for a few hundred short sessions.
PARAMS = {
    ("item2vec", "local"): {"vector_size": 32, "epochs": 30, "window": 3, "sample": 0.0},
    ("item2vec", "spark"): {"vector_size": 32, "epochs": 10, "window": 3},
    ("als", "local"): {"factors": 16, "iterations": 15, "regularization": 0.1},
    ("als", "spark"): {"factors": 16, "iterations": 10, "regularization": 0.1},
    ("sasrec", "local"): {"dim": 32, "blocks": 1, "epochs": 20, "max_len": 20, "dropout": 0.2,
                          "learning_rate": 0.01},
}


@pytest.mark.spark
@pytest.mark.integration
@pytest.mark.parametrize(("model", "engine"), list(PARAMS))
def test_model_recommends_the_withheld_item(model, engine, offline_settings, small_events,
                                            spark, redis_client, pg):
    cfg = pipeline.config_from_settings(
        offline_settings, model, engine=engine, window_days=30,
        window_end=small_events["end"], params=PARAMS[(model, engine)])

    state = pipeline.run_all(cfg, spark)

    report = json.loads(Path(state["report"]).read_text())
    ours, popular = report["results"]["model"], report["results"]["popularity"]
    # Most users' next item is in the model's top 10 over all unseen items; popularity
    # (the same for everyone) cannot know a user's taste group.
    assert ours["users"] >= 250
    assert ours["hr_at_10"] >= 0.6, report["results"]
    assert ours["hr_at_10"] >= popular["hr_at_10"] + 0.3, report["results"]
    assert ours["ndcg_at_10"] > popular["ndcg_at_10"]
    # The full blend, ranked by reco.ranking as the API ranks, beats popularity too.
    blend = report["results"]["blend"]
    assert blend["users"] >= 250 and blend["hr_at_10"] >= popular["hr_at_10"] + 0.3, blend
    assert state["gate"]["accepted"], state["gate"]

    version = state["published"]
    assert redis_client.hget(keys.MODEL_VERSIONS, model) == version
    if model == "sasrec":
        # The training curves in MLflow, one point per epoch: the evaluated network's, falling
        # as it learns, then the refit's (SASRecParams.refit_epochs).
        history = tracking.client(cfg.mlflow_tracking_uri).get_metric_history
        train = [m.value for m in sorted(history(state["run_id"], "train.loss"),
                                         key=lambda m: m.step)]
        assert len(train) == 20 and train[-1] < 0.8 * train[0], train
        assert [m.step for m in history(state["run_id"], "refit.loss")] == [0, 1]
        # u0 walks group 0's ring: the few items most likely next continue that walk.
        cands, probs = neighbours.decode(redis_client.get(keys.user_seq("u0", version)))
        assert len(cands) == 100 and list(probs) == sorted(probs, reverse=True)
        assert all(i.startswith("g0-") for i in cands[:3]), cands[:10]
        assert 0 < sum(probs) <= 1.0 + 1e-6
    else:
        _assert_item_neighbours(model, version, report, redis_client)
    if model == "als":
        cands, _ = neighbours.decode(redis_client.get(keys.user_cf("u0", version)))
        assert len(cands) == 100  # ALSParams.candidates
        assert sum(i.startswith("g0-") for i in cands[:10]) >= 7, cands[:10]
    row = pg.execute("SELECT status, mlflow_run_id, metrics, published_at FROM models"
                     " WHERE name = %s AND version = %s", (model, version)).fetchone()
    assert row[0] == "published" and row[1] == state["run_id"] and row[3] is not None
    assert row[2]["model.hr_at_10"] == ours["hr_at_10"]


def _assert_item_neighbours(model: str, version: str, report: dict, redis_client) -> None:
    item = synthetic.item_id(0, 5)
    key = keys.item_knn(item, version) if model == "item2vec" else \
        keys.item_cf_neighbours(item, version)
    ids, scores = neighbours.decode(redis_client.get(key))
    assert len(ids) == min(100, report["catalogue"] - 1)
    assert list(scores) == sorted(scores, reverse=True)
    # The closest neighbours of an item are items of its own taste group.
    assert sum(i.startswith("g0-") for i in ids[:10]) >= 8, ids[:10]


def _nothing_to_learn(tmp_path: Path, sessions: list, engine: str, spark=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_jobs import BadRunInput, item2vec

    pq.write_table(pa.table({"items": pa.array(sessions, pa.list_(pa.string()))}),
                   tmp_path / "sessions.parquet")
    params = item2vec.Item2VecParams(min_count=2)
    with pytest.raises(BadRunInput, match="^no sessions with two or more items in the window"):
        item2vec.fit(tmp_path / "sessions.parquet", params, engine, spark)


@pytest.mark.parametrize("sessions", [[], [["a"], ["b"]]])
def test_item2vec_with_nothing_to_learn_says_so_and_is_not_retried(tmp_path: Path, sessions):
    """No session, or no item seen `min_count` times: gensim's "you must first build
    vocabulary" RuntimeError came first, and Airflow retried it as if a server were down."""
    _nothing_to_learn(tmp_path, sessions, "local")


@pytest.mark.spark
def test_item2vec_on_spark_with_nothing_to_learn_says_so(tmp_path: Path, spark):
    _nothing_to_learn(tmp_path, [["a"], ["b"]], "spark", spark)
