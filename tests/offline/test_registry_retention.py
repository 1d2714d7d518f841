"""Registry retention: every retrained version's model files stayed in MLflow forever (hundreds
of MB each at production size); old versions now lose them, and their runs keep the history."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import MlflowException

from reco import keys, neighbours
from reco.settings import Settings
from reco.stack import servers as stack_servers
from reco.stack.health import free_port
from spark_jobs import BadRunInput, champion, pipeline, registry_retention, tracking
from tests.offline.artifacts import files, on_disk
from tests.offline.test_champion import cli, cli_serve
from tests.offline.test_pipeline_steps import accepted, logged_run, tiny_als

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def version(number: int, age_days: float = 7.0, **tags: str) -> ModelVersion:
    created = int((NOW - timedelta(days=age_days)).timestamp() * 1000)
    return ModelVersion("als", str(number), created,
                        tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_the_newest_the_champion_the_serving_and_young_ungated_versions_are_kept():
    versions = [version(1, gate="rejected", serving="true"), version(2, gate="accepted"),
                version(3, gate="rejected"), version(4, age_days=0.5),  # its run in progress
                version(5, age_days=2.0),  # a run that failed before its gate, a day ago
                version(6, gate="held"), version(7, gate="accepted")]

    assert registry_retention.kept_versions(versions, 2, "2", NOW) == {"1", "2", "4", "6", "7"}
    assert registry_retention.kept_versions(versions, 10, None, NOW) == {
        str(n) for n in range(1, 8)}


def gated_version(uri: str, name: str, folder: Path, before_mlflow_models: bool = False
                  ) -> tuple[str, str]:
    """(run id, registry version) of an ALS run through its gate: a metric and its
    `evaluation/` artifacts on the run, the gate's tag on the version."""
    run_id, registry_version = logged_run(uri, name, tiny_als(folder / name),
                                          before_mlflow_models)
    report = folder / f"{name}-evaluation"
    report.mkdir()
    (report / "evaluation.json").write_text('{"k": 10}')
    tracking.log_artifacts(uri, run_id, report, tracking.EVALUATION_ARTIFACTS)
    tracking.log_metrics(uri, run_id, {"model.ndcg_at_10": 0.1})
    tracking.tag_version(uri, "als", registry_version, {tracking.GATE_TAG: "rejected"})
    return run_id, registry_version


def registry(uri: str) -> list[str]:
    return sorted((mv.version for mv in tracking.client(uri).search_model_versions(
        "name = 'als'")), key=int)


@pytest.mark.integration
def test_old_versions_lose_their_model_files_and_their_runs_stay(mlflow_uri, mlflow_artifacts,
                                                                 tmp_path):
    uri = mlflow_uri
    client = tracking.client(uri)
    # 1: registered as run artifacts (before MLflow models); 2: champion; 3: serving.
    runs = {}
    for n in range(1, 7):
        run_id, registry_version = gated_version(uri, f"v{n}", tmp_path,
                                                 before_mlflow_models=n == 1)
        runs[registry_version] = run_id
    assert list(runs) == ["1", "2", "3", "4", "5", "6"]
    tracking.set_champion(uri, "als", "2")
    tracking.mark_serving(uri, "als", "3")
    run_files = {v: on_disk(mlflow_artifacts, client.get_run(run).info.artifact_uri)
                 for v, run in runs.items()}
    model_files = {v: on_disk(mlflow_artifacts, client.get_model_version_download_uri("als", v))
                   for v in runs if v != "1"}
    model_files["1"] = run_files["1"] / tracking.MODEL_ARTIFACTS
    assert files(model_files["1"]) == ["model.npz"]
    assert "artifacts/v4/model.npz" in files(model_files["4"])
    model_4 = client.get_model_version("als", "4").source.removeprefix("models:/")

    result = registry_retention.prune_registry(uri, "als", keep=2)

    assert result == registry_retention.Retention("als", kept=["2", "3", "5", "6"],
                                                  pruned=["1", "4"])
    assert registry(uri) == ["2", "3", "5", "6"]
    assert not model_files["1"].exists() and not model_files["4"].exists()
    for kept in ("2", "3", "5", "6"):
        assert f"artifacts/v{kept}/model.npz" in files(model_files[kept])
    with pytest.raises(MlflowException, match="not found"):
        client.get_logged_model(model_4)  # soft-deleted
    # The runs keep their history, and say why their model is gone.
    for pruned in ("1", "4"):
        run = client.get_run(runs[pruned])
        assert files(run_files[pruned]) == ["evaluation/evaluation.json"]
        assert run.info.lifecycle_stage == "active"
        assert run.data.metrics == {"model.ndcg_at_10": 0.1}
        assert run.data.params == {"engine": "local"}
        assert run.data.tags[tracking.PRUNED_VERSION_TAG] == pruned
        assert datetime.fromisoformat(run.data.tags[tracking.PRUNED_TAG]) <= datetime.now(UTC)
    # Nothing left to do the next time.
    again = registry_retention.prune_registry(uri, "als", keep=2)
    assert again.pruned == [] and again.failed == {}


@pytest.mark.integration
def test_keep_0_and_versions_of_runs_in_progress_prune_nothing(mlflow_uri, mlflow_artifacts,
                                                               tmp_path):
    uri = mlflow_uri
    gated_version(uri, "v1", tmp_path)
    logged_run(uri, "v2", tiny_als(tmp_path / "v2"))  # no gate yet: its run goes on
    for n in (3, 4):
        gated_version(uri, f"v{n}", tmp_path)
    tracking.set_champion(uri, "als", "4")
    tracking.mark_serving(uri, "als", "4")
    before = files(mlflow_artifacts)

    assert registry_retention.prune_registry(uri, "als", keep=0) == registry_retention.Retention(
        "als")
    assert registry(uri) == ["1", "2", "3", "4"] and files(mlflow_artifacts) == before
    # The ungated version is kept while it is young.
    assert registry_retention.prune_registry(uri, "als", keep=1).pruned == ["1", "3"]
    later = datetime.now(UTC) + timedelta(seconds=registry_retention.UNGATED_KEPT_S + 60)
    assert registry_retention.prune_registry(uri, "als", keep=1, now=later).pruned == ["2"]
    assert registry(uri) == ["4"]


def published(cfg: pipeline.PipelineConfig, name: str, folder: Path) -> dict:
    """The publish step of an ALS run the gate accepted (and tagged)."""
    gated = accepted(cfg.mlflow_tracking_uri, name, tiny_als(folder / name))
    tracking.tag_version(cfg.mlflow_tracking_uri, "als", tracking.champion(
        cfg.mlflow_tracking_uri, "als")[0], {tracking.GATE_TAG: "accepted"})
    return pipeline.publish_step(cfg, gated)


def four_published_two_kept(settings: Settings, tmp_path: Path) -> pipeline.PipelineConfig:
    """ALS v1 to v4 published in turn, retention keeping 2: versions 1 and 2 pruned."""
    cfg = pipeline.config_from_settings(settings.model_copy(update={"offline_keep_versions": 2}),
                                        "als", run_dir=tmp_path / "run")
    states = [published(cfg, f"v{n}", tmp_path) for n in range(1, 5)]
    assert [state["registry_retention"]["pruned"] for state in states] == [[], [], ["1"], ["2"]]
    assert states[-1]["published"] == "v4"
    assert registry(cfg.mlflow_tracking_uri) == ["3", "4"]
    return cfg


@pytest.mark.integration
def test_the_publish_step_prunes_and_a_kept_version_still_rolls_back(offline_settings, pg,
                                                                     redis_client, tmp_path):
    cfg = four_published_two_kept(offline_settings, tmp_path)

    result = champion.roll_back(cfg, "3")  # from MLflow's copy: v3's lists were retired

    assert result["published"] == "v3" and result["keys_written"] > 0
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v3"
    assert neighbours.decode(redis_client.get(keys.user_cf("u1", "v3")))[0] == ["c", "a", "d"]
    # And forward again through the CLI.
    assert cli_rollback(offline_settings, "4").exit_code == 0
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v4"


@pytest.mark.integration
def test_a_rollback_to_a_pruned_version_says_it_was_pruned(offline_settings, pg, redis_client,
                                                           tmp_path):
    cfg = four_published_two_kept(offline_settings, tmp_path)
    uri = cfg.mlflow_tracking_uri
    run_1 = tracking.client(uri).search_runs(
        [tracking.experiment_id(tracking.client(uri), "als")],
        f"tags.`{tracking.PRUNED_VERSION_TAG}` = '1'")[0].info.run_id
    pruned = (f"^als registry version 1 was pruned by registry retention at .*: its model files "
              f"are deleted, so it cannot be served; its run {run_1} keeps its params and "
              "metrics. Move the champion alias to a kept version, or train again$")

    with pytest.raises(BadRunInput, match=pruned):
        champion.roll_back(cfg, "1")
    result = cli_rollback(offline_settings, "2")
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "als registry version 2 was pruned by registry retention" in said
    assert "Traceback" not in result.output
    assert "als has no registry version 9" in " ".join(cli_rollback(offline_settings, "9")
                                                       .stderr.split())
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v4"
    assert tracking.champion(uri, "als")[0] == "4"


@pytest.mark.integration
def test_a_rollback_that_cannot_serve_leaves_the_champion_where_it_was(
        offline_settings, pg, redis_client, tmp_path):
    """The alias moved first: a version not trained by the pipeline became a champion with no
    lists, `serve_champions` failed from then on and every gate compared with nothing."""
    cfg = four_published_two_kept(offline_settings, tmp_path)
    uri = cfg.mlflow_tracking_uri
    by_hand = tracking.start_run(uri, "als", "local", {}, {})  # no publish_version tag
    tracking.log_artifacts(uri, by_hand, tiny_als(tmp_path / "by-hand"), tracking.MODEL_ARTIFACTS)
    tracking.finish_run(uri, by_hand)
    hand_version = tracking.register(uri, "als", by_hand)

    with pytest.raises(BadRunInput, match=f"run {by_hand} has no publish_version tag"):
        champion.roll_back(cfg, hand_version)
    assert tracking.champion(uri, "als")[0] == "4"
    # A version that passes the checks but fails to serve (its files deleted by hand, not by
    # retention): the alias goes back.
    tracking.delete_logged_model(uri, tracking.client(uri).get_model_version(
        "als", "3").source.removeprefix("models:/"))
    with pytest.raises(MlflowException):
        champion.roll_back(cfg, "3")
    assert tracking.champion(uri, "als")[0] == "4"
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v4"
    # Redis down: refused before the alias moves (the publish lock is Redis').
    down = dataclasses.replace(cfg, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        champion.roll_back(down, "4")
    assert tracking.champion(uri, "als")[0] == "4"


@pytest.mark.integration
def test_a_failed_first_rollback_leaves_no_champion(offline_settings, tmp_path):
    uri = offline_settings.mlflow_tracking_uri
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    _, registry_version = gated_version(uri, "v1", tmp_path)
    tracking.delete_logged_model(uri, tracking.client(uri).get_model_version(
        "als", registry_version).source.removeprefix("models:/"))  # its files gone

    with pytest.raises(MlflowException):
        champion.roll_back(cfg, registry_version)

    assert tracking.champion(uri, "als") is None


@pytest.mark.integration
def test_a_version_whose_run_was_purged_is_still_pruned(offline_settings, mlflow_uri,
                                                        mlflow_artifacts, tmp_path):
    """Its run deleted in the UI, then `mlflow gc`: reading the run to tag it failed, and the
    version (and its model files) stayed, failing at every publish."""
    uri = mlflow_uri
    purged, _ = gated_version(uri, "v1", tmp_path)
    gated_version(uri, "v2", tmp_path)
    tracking.set_champion(uri, "als", "2")
    model_1 = on_disk(mlflow_artifacts, tracking.client(uri).get_model_version_download_uri(
        "als", "1"))
    assert files(model_1)
    tracking.client(uri).delete_run(purged)
    subprocess.run([stack_servers.venv_bin("mlflow"), "gc", "--backend-store-uri",
                    offline_settings.pg_url(offline_settings.pg_mlflow_database),
                    "--run-ids", purged], check=True, capture_output=True,
                   env={**os.environ, "MLFLOW_TRACKING_URI": uri})

    result = registry_retention.prune_registry(uri, "als", keep=1)

    assert (result.pruned, result.failed) == (["1"], {})
    assert registry(uri) == ["2"] and files(model_1) == []


@pytest.mark.integration
def test_serving_a_champion_whose_pruning_stopped_part_way_says_it_was_pruned(
        offline_settings, pg, redis_client, tmp_path):
    """A pass that failed after tagging the version (its files may be gone) leaves the version
    in the registry: the alias can be moved to it by hand."""
    cfg = four_published_two_kept(offline_settings, tmp_path)
    uri = cfg.mlflow_tracking_uri
    tracking.tag_version(uri, "als", "3", {tracking.PRUNED_TAG: "2026-11-28T12:00:00+00:00"})
    tracking.set_champion(uri, "als", "3")

    result = cli_serve(offline_settings, "als")

    assert result.exit_code == 1
    assert ("als registry version 3 was pruned by registry retention at "
            "2026-11-28T12:00:00+00:00" in " ".join(result.stderr.split()))
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v4"


@pytest.mark.integration
def test_a_retention_failure_never_fails_the_publish(offline_settings, redis_client, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    down = dataclasses.replace(cfg, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")

    state = pipeline.publish_step(down, {"gate": {"accepted": False, "champion_run_id": None}})

    assert state["published"] is None
    assert state["registry_retention"]["pruned"] == []
    assert "Connection refused" in state["registry_retention"]["error"]


def cli_rollback(settings: Settings, registry_version: str):
    return cli(settings, "models", "rollback", "als", registry_version,
               RECO_OFFLINE_KEEP_VERSIONS="2")
