"""Each registry version is an MLflow model (`spark_jobs.served_model`) that a data scientist
loads by alias and asks for the lists Redis serves for it; versions registered before that, as
run artifacts, are still served."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from reco import keys
from spark_jobs import champion, pipeline, tracking
from tests.offline.test_pipeline_steps import logged_run, tiny_als


@pytest.fixture
def champion_model(offline_settings, tmp_path, monkeypatch):
    """The ALS champion loaded as a notebook would: `models:/als@champion`."""
    uri = offline_settings.mlflow_tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    _, registry_version = logged_run(uri, "v1", tiny_als(tmp_path / "v1"))
    tracking.set_champion(uri, "als", registry_version)
    return mlflow.pyfunc.load_model("models:/als@champion")


def rows(frame: pd.DataFrame) -> list[tuple]:
    return [(q, i, round(s, 6), r) for q, i, s, r in frame.itertuples(index=False)]


@pytest.mark.integration
def test_the_champion_answers_a_users_list_as_published(champion_model):
    # tiny_als: u1's candidates are items 2, 0, 3 (c, a, d) at 0.9, 0.5, 0.2.
    answer = champion_model.predict(pd.DataFrame({"user_id": ["u1", "nobody"]}))

    assert list(answer.columns) == ["query", "item_id", "score", "rank"]
    assert rows(answer) == [("u1", "c", 0.9, 1), ("u1", "a", 0.5, 2), ("u1", "d", 0.2, 3)]
    shorter = champion_model.predict(pd.DataFrame({"user_id": ["u2"]}), params={"k": 2})
    assert rows(shorter) == [("u2", "b", 0.8, 1), ("u2", "d", 0.4, 2)]


@pytest.mark.integration
def test_the_champion_answers_an_items_neighbours(champion_model):
    answer = champion_model.predict(pd.DataFrame({"item_id": ["d"]}))

    assert rows(answer) == [("d", "b", 0.8, 1), ("d", "d", 0.4, 2)]


@pytest.mark.integration
def test_a_query_without_one_id_column_names_what_it_expects(champion_model):
    with pytest.raises(Exception, match=r"expected one column of item_id or user_id"):
        champion_model.predict(pd.DataFrame({"user_id": ["u1"], "item_id": ["a"]}))


@pytest.mark.integration
def test_the_model_says_which_lists_it_lacks(offline_settings, tmp_path, monkeypatch):
    """An Item2Vec version has item-item lists only."""
    uri = offline_settings.mlflow_tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = tmp_path / "item2vec"
    folder.mkdir()
    np.savez(folder / "model.npz", item_ids=np.array(["a", "b"]),
             vectors=np.eye(2, dtype=np.float32), nbr_idx=np.array([[1], [0]], dtype=np.int32),
             nbr_scores=np.array([[0.5], [0.5]], dtype=np.float32))
    run_id = tracking.start_run(uri, "item2vec", "local", {}, {})
    model_id = tracking.log_model(uri, run_id, "item2vec", folder, "v1")
    loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")

    assert rows(loaded.predict(pd.DataFrame({"item_id": ["a"]}))) == [("a", "b", 0.5, 1)]
    with pytest.raises(Exception, match="user_id: this model has no lists by user_id; it has "
                                        "lists by item_id"):
        loaded.predict(pd.DataFrame({"user_id": ["u1"]}))
    assert loaded.metadata.metadata == {"model": "item2vec", "publish_version": "v1"}


@pytest.mark.integration
def test_a_version_registered_as_run_artifacts_is_still_served(offline_settings, pg,
                                                               redis_client, tmp_path):
    """Registry versions made before versions were MLflow models point to their run's
    `model` folder: a rollback to one downloads it from there."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'old', 'champion')")
    _, registry_version = logged_run(uri, "old", tiny_als(tmp_path / "old"),
                                     before_mlflow_models=True)
    tracking.set_champion(uri, "als", registry_version)

    result = champion.serve_champion(cfg)

    assert result["published"] == "old"
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "old"
    assert redis_client.exists(keys.user_cf("u1", "old")) == 1


@pytest.mark.integration
def test_a_model_that_fails_to_log_is_deleted(offline_settings, tmp_path):
    """It stayed as a FAILED logged model with whatever it had uploaded: the train step never
    got its id to delete it, and retention only looks at registry versions."""
    uri = offline_settings.mlflow_tracking_uri
    run_id = tracking.start_run(uri, "als", "local", {}, {})
    client = tracking.client(uri)

    def logged_models() -> list:
        return client.search_logged_models(
            experiment_ids=[tracking.experiment_id(client, "als")],
            filter_string=f"source_run_id = '{run_id}'")

    with pytest.raises(Exception, match="no-such-model"):
        tracking.log_model(uri, run_id, "als", tmp_path / "no-such-model", "v1")
    assert logged_models() == []
    # The same search finds a model that logged.
    model_id = tracking.log_model(uri, run_id, "als", tiny_als(tmp_path / "v1"), "v1")
    assert [m.model_id for m in logged_models()] == [model_id]
