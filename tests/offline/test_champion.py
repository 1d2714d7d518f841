"""Serving follows the registry's `champion` alias: a promotion or rollback by hand in MLflow
reaches Redis through `serve_champion` (the `serve_champions` DAG, `reco models serve-champion`),
and the registry shows which version serves."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from reco import keys
from reco.cli import app
from reco.settings import get_settings
from spark_jobs import BadRunInput, champion, pipeline, tracking
from tests.offline.test_pipeline_steps import accepted, rejected, statuses, tiny_als


def serving_tags(uri: str) -> dict[str, str | None]:
    """Each ALS registry version's `serving` tag."""
    versions = tracking.client(uri).search_model_versions("name = 'als'")
    return {str(mv.version): mv.tags.get(tracking.SERVING_TAG) for mv in versions}


def v2_serving_v1_lists_gone(settings, pg, redis_client, tmp_path) -> pipeline.PipelineConfig:
    """ALS v1 then v2 published; v1's lists gone (its grace period over), so serving it
    again needs MLflow's copy."""
    cfg = pipeline.config_from_settings(settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion'),"
               " ('als', 'v2', 'champion')")
    pipeline.publish_step(cfg, accepted(uri, "v1", tiny_als(tmp_path / "v1")))
    pipeline.publish_step(cfg, accepted(uri, "v2", tiny_als(tmp_path / "v2")))
    redis_client.unlink(*redis_client.scan_iter(match=keys.version_prefix("cf_user", "v1")))
    return cfg


@pytest.mark.integration
def test_a_rollback_by_hand_is_served_by_serve_champion(offline_settings, pg, redis_client,
                                                        tmp_path):
    """Only the publish task of the next training run acted on the alias, and only when that
    run was rejected: a rollback in the MLflow UI waited up to a week (ALS) to be served."""
    cfg = v2_serving_v1_lists_gone(offline_settings, pg, redis_client, tmp_path)
    uri = cfg.mlflow_tracking_uri
    assert serving_tags(uri) == {"1": None, "2": "true"}

    tracking.set_champion(uri, "als", "1")  # the data scientist's rollback
    result = champion.serve_champion(cfg)

    assert result["published"] == "v1" and result["champion_version"] == "1"
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert redis_client.exists(keys.user_cf("u1", "v1"), keys.model_items("als", "v1")) == 2
    assert 0 < redis_client.ttl(keys.user_cf("u1", "v2")) <= cfg.publish_grace_s
    assert statuses(pg) == {"v1": ("published", True), "v2": ("retired", True)}
    assert serving_tags(uri) == {"1": "true", "2": None}
    # Nothing changed since: nothing to do.
    again = champion.serve_champion(cfg)
    assert again["published"] is None and again["reason"] == "registry version 1 already serving"
    # Promoted forward again by hand, through the CLI.
    tracking.set_champion(uri, "als", "2")
    assert cli_serve(offline_settings, "als").exit_code == 0
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v2"
    assert serving_tags(uri) == {"1": None, "2": "true"}


@pytest.mark.integration
def test_serve_champion_prints_no_download_progress_bars(offline_settings, pg, redis_client,
                                                         tmp_path):
    """Serving a champion whose lists are gone downloads its model from MLflow, whose tqdm
    bars ("Downloading artifacts: 100%|...") landed in the command's output."""
    cfg = v2_serving_v1_lists_gone(offline_settings, pg, redis_client, tmp_path)
    uri = cfg.mlflow_tracking_uri
    shutil.rmtree(tmp_path / "v1")  # only MLflow's copy is left
    tracking.set_champion(uri, "als", "1")

    result = cli_serve(offline_settings, "als")

    assert result.exit_code == 0, result.output
    assert "Downloading artifacts" not in result.output
    assert json.loads(result.stdout)["published"] == "v1"
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"


def cli(settings, *args: str, **env: str):
    """`reco ARGS` against the fixture servers `settings` names, with more `env`."""
    env = {"RECO_PG_PORT": str(settings.pg_port), "RECO_REDIS_URL": settings.redis_url,
           "RECO_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "RECO_STATE_DIR": str(settings.state_dir),
           "RECO_JDBC_PARTITIONS": str(settings.jdbc_partitions),
           "RECO_SPARK_DRIVER_MEMORY": settings.spark_driver_memory, **env}
    if settings.spark_jars_dir:
        env["RECO_SPARK_JARS_DIR"] = str(settings.spark_jars_dir)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def cli_serve(settings, model: str):
    return cli(settings, "models", "serve-champion", model)


@pytest.mark.integration
def test_without_a_champion_nothing_is_served(offline_settings, redis_client, tmp_path):
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    assert champion.serve_champion(cfg) == {"model": "als", "published": None,
                                           "reason": "als has no champion"}
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") is None


def test_the_cli_names_an_unknown_model():
    result = CliRunner().invoke(app, ["models", "serve-champion", "bpr"])
    assert result.exit_code == 2
    assert "'bpr' is not a model: expected one of item2vec, als, sasrec" in " ".join(
        result.stderr.replace("│", " ").split())


@pytest.mark.integration
def test_a_champion_the_pipeline_did_not_train_is_refused_by_name(offline_settings, pg,
                                                                  redis_client, tmp_path):
    """A version registered by hand (no `publish_version` run tag) made the publish task fail
    with KeyError: 'publish_version', retried twice."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    run_id = tracking.start_run(uri, "als", "local", {}, {})
    tracking.set_champion(uri, "als", tracking.register(uri, "als", run_id))
    why = (f"^run {run_id} has no publish_version tag: it was not trained by the reco pipeline "
           r"\(DAG or `reco train`\), so it has no lists to serve; move the champion alias to a "
           "version the pipeline registered$")

    with pytest.raises(BadRunInput, match=why):
        pipeline.publish_step(cfg, rejected(uri, run_id))
    with pytest.raises(BadRunInput, match=why):
        champion.serve_champion(cfg)
    result = cli_serve(offline_settings, "als")
    assert result.exit_code == 1 and "has no publish_version tag" in result.stderr
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") is None


@pytest.mark.integration
def test_the_dag_task_serves_every_model_though_one_fails(offline_settings, pg, redis_client,
                                                         tmp_path, monkeypatch):
    """One task serves all models (a task is a process importing MLflow, every 5 minutes);
    a model that fails neither stops the others nor passes unnoticed."""
    from spark_jobs import dag_steps

    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    pipeline.publish_step(cfg, accepted(uri, "v1", tiny_als(tmp_path / "v1")))
    pipeline.publish_step(cfg, accepted(uri, "v2", tiny_als(tmp_path / "v2")))
    tracking.set_champion(uri, "als", "1")
    for name, value in {"RECO_PG_PORT": str(offline_settings.pg_port),
                        "RECO_REDIS_URL": offline_settings.redis_url,
                        "RECO_MLFLOW_TRACKING_URI": uri,
                        "RECO_STATE_DIR": str(offline_settings.state_dir)}.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(RuntimeError, match=r"failed for nope \(ValueError: .*nope"):
        dag_steps.serve_champions(["nope", "als"])

    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
