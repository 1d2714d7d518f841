"""The pipeline's steps called directly, failing part-way and retried as Airflow retries them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
import redis

from reco import keys
from reco.settings import Settings
from reco.stack.health import free_port
from spark_jobs import pipeline, publish, tracking


@pytest.fixture
def host_in_new_york(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_window_reaching_past_the_events_retention_is_refused(tmp_path) -> None:
    """A window (a backfill, a longer window_days) reaching before the retention trained on
    what was left, and passed for a run of the whole window."""
    from spark_jobs import BadRunInput

    settings = Settings(state_dir=tmp_path, events_retention_days=90)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    cfg = pipeline.config_from_settings(settings, "als", window_end=datetime(2026, 3, 10),
                                        window_days=10)
    with pytest.raises(BadRunInput, match=(
            r"the window starts at 2026-02-28 00:00 UTC, before the events kept "
            r"\(RECO_EVENTS_RETENTION_DAYS=90: from 2026-03-03 00:00 UTC\): shorten "
            r"window_days or move window_end")):
        pipeline.extract_step(cfg, now=now)


def test_a_window_end_without_a_zone_is_utc_whatever_the_hosts_zone(host_in_new_york, tmp_path):
    settings = Settings(state_dir=tmp_path)
    # What `reco train als --window-end 2024-01-01` passes.
    cfg = pipeline.config_from_settings(settings, "als", window_end=datetime(2024, 1, 1))
    assert cfg.window_end == "2024-01-01T00:00:00+00:00"
    assert cfg.window[1] == datetime(2024, 1, 1, tzinfo=UTC)
    assert Path(cfg.run_dir).name.startswith("20240101T000000-")
    # Another run of the window (other hyperparameters, another engine) has its own folder:
    # they shared one and overwrote each other's extract and model.
    again = pipeline.config_from_settings(settings, "als", window_end=datetime(2024, 1, 1))
    assert again.run_dir != cfg.run_dir and Path(again.run_dir).parent == Path(cfg.run_dir).parent
    paris = datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))
    cfg = pipeline.config_from_settings(settings, "als", window_end=paris)
    assert cfg.window_end == "2023-12-31T23:00:00+00:00"


def run_folder(parent: Path, name: str, age_s: float, finished: bool = True) -> Path:
    """A run folder whose steps last wrote `age_s` ago, its run finished or not."""
    folder = parent / name
    (folder / "extract").mkdir(parents=True)
    paths = [folder / "extract", folder]
    if finished:
        (folder / pipeline.FINISHED_MARKER).touch()
        paths.insert(0, folder / pipeline.FINISHED_MARKER)
    then = time.time() - age_s
    for path in paths:
        os.utime(path, (then, then))
    return folder


def test_a_publish_keeps_the_newest_run_folders_of_its_model(tmp_path):
    """Run folders (Parquet copies of the window, models, evaluation) were never deleted."""
    # No Redis or MLflow here: registry retention (offline_keep_versions) off.
    settings = Settings(state_dir=tmp_path, offline_keep_runs=3, offline_keep_versions=0)
    cfg = pipeline.config_from_settings(settings, "als", window_end=datetime(2024, 1, 1))
    runs = Path(cfg.run_dir).parent
    assert runs == tmp_path / "offline" / "als"
    old = [run_folder(runs, f"run-{n}", age_s=3600.0 * n) for n in (4, 1, 3, 2)]
    other_model = run_folder(tmp_path / "offline" / "sasrec", "run-9", age_s=9e5)
    Path(cfg.run_dir).mkdir()
    os.utime(cfg.run_dir, (time.time() - 9e5, time.time() - 9e5))  # its own: kept whatever

    state = pipeline.publish_step(cfg, {"gate": {"accepted": False, "champion_run_id": None}})

    assert state["published"] is None
    assert sorted(p.name for p in runs.iterdir()) == sorted([Path(cfg.run_dir).name, "run-1",
                                                             "run-2"])
    assert other_model.exists()
    # A run folder chosen outside the offline dir (a test's, a benchmark's) prunes nothing.
    elsewhere = dataclasses.replace(cfg, run_dir=str(tmp_path / "bench" / "run"))
    kept = [run_folder(tmp_path / "bench", f"b-{n}", age_s=3600.0 * n) for n in range(4)]
    pipeline.publish_step(elsewhere, {"gate": {"accepted": False, "champion_run_id": None}})
    assert all(folder.exists() for folder in kept)
    assert old[1].exists()


def test_a_publish_never_prunes_a_run_still_in_progress(tmp_path):
    """Backfills run several at once (max_active_runs does not hold them back): a publish
    deleted the folders of runs still training, whose later tasks then failed."""
    # No Redis or MLflow here: registry retention (offline_keep_versions) off.
    settings = Settings(state_dir=tmp_path, offline_keep_runs=2, offline_keep_versions=0)
    cfg = pipeline.config_from_settings(settings, "als", window_end=datetime(2024, 1, 1))
    runs = Path(cfg.run_dir).parent
    training = [run_folder(runs, f"backfill-{n}", age_s=60.0 * n, finished=False)
                for n in range(1, 4)]
    finished = [run_folder(runs, f"done-{n}", age_s=7200.0 * n) for n in (1, 2)]
    abandoned = run_folder(runs, "failed", age_s=pipeline.ABANDONED_AFTER_S + 60,
                           finished=False)
    Path(cfg.run_dir).mkdir()

    pipeline.publish_step(cfg, {"gate": {"accepted": False, "champion_run_id": None}})

    assert all(folder.exists() for folder in training)
    assert finished[0].exists() and not finished[1].exists() and not abandoned.exists()
    assert (Path(cfg.run_dir) / pipeline.FINISHED_MARKER).exists()


def tiny_als(folder: Path) -> Path:
    """A trained ALS model's folder: two users, four items."""
    folder.mkdir(parents=True)
    idx = np.array([[2, 0, 3], [1, 3, 0]], dtype=np.int32)
    scores = np.array([[0.9, 0.5, 0.2], [0.8, 0.4, 0.1]], dtype=np.float32)
    np.savez(folder / "model.npz", user_ids=np.array(["u1", "u2"]),
             item_ids=np.array(["a", "b", "c", "d"]), cand_idx=idx, cand_scores=scores,
             nbr_idx=idx[:, :2].repeat(2, 0), nbr_scores=scores[:, :2].repeat(2, 0))
    return folder


def logged_run(uri: str, version: str, model_dir: Path,
               before_mlflow_models: bool = False) -> tuple[str, str]:
    """(run id, registry version) of an ALS run as the train step leaves it (or, with
    `before_mlflow_models`, as it did when the folder was a run artifact)."""
    run_id = tracking.start_run(uri, "als", "local", {}, {})
    if before_mlflow_models:
        tracking.log_artifacts(uri, run_id, model_dir, tracking.MODEL_ARTIFACTS)
        model_id = None
    else:
        model_id = tracking.log_model(uri, run_id, "als", model_dir, version)
    tracking.set_tags(uri, run_id, {"publish_version": version})
    tracking.finish_run(uri, run_id)
    return run_id, tracking.register(uri, "als", run_id, model_id)


def accepted(uri: str, version: str, model_dir: Path) -> dict:
    """What the gate step hands the publish step for a run that passed (and promoted)."""
    run_id, registry_version = logged_run(uri, version, model_dir)
    tracking.set_champion(uri, "als", registry_version)
    return {"run_id": run_id, "version": version, "model_dir": str(model_dir),
            "gate": {"accepted": True, "champion_run_id": run_id}}


def rejected(uri: str, champion_run_id: str) -> dict:
    """What the gate step hands the publish step for a run that failed: serve the champion."""
    return {"run_id": tracking.start_run(uri, "als", "local", {}, {}), "version": "v9",
            "gate": {"accepted": False, "champion_run_id": champion_run_id}}


def statuses(pg) -> dict[str, tuple[str, bool]]:
    rows = pg.execute("SELECT version, status, published_at IS NOT NULL FROM models"
                      " WHERE name = 'als'").fetchall()
    return {version: (status, published) for version, status, published in rows}


def down(cfg: pipeline.PipelineConfig) -> pipeline.PipelineConfig:
    """The same config while PostgreSQL is unreachable (nothing listens on the port)."""
    return dataclasses.replace(
        cfg, database_url=f"postgresql://reco:reco@127.0.0.1:{free_port()}/reco")


@contextlib.contextmanager
def recording_fails(pg) -> Iterator[None]:
    """Recording a publish in `models` fails (the table renamed for the moment) while
    PostgreSQL answers: the publish reads `user_erasures` there before its writes."""
    pg.execute("ALTER TABLE models RENAME TO models_away")
    try:
        with pytest.raises(psycopg.errors.UndefinedTable):
            yield
    finally:
        pg.execute("ALTER TABLE models_away RENAME TO models")


def switched_unrecorded(cfg: pipeline.PipelineConfig, pg, redis_client, tmp_path: Path
                        ) -> dict:
    """v1 published; then Redis switches to v2 and recording it fails: Airflow retries (the
    state returned)."""
    uri = cfg.mlflow_tracking_uri
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(uri, "v1", tiny_als(tmp_path / "v1")))
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v2', 'champion')")
    v2 = accepted(uri, "v2", tiny_als(tmp_path / "v2"))
    with recording_fails(pg):
        pipeline.publish_step(cfg, v2)
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v2"
    assert statuses(pg) == {"v1": ("published", True), "v2": ("champion", False)}
    return v2


@pytest.mark.integration
def test_publish_retry_after_recording_failed_records_the_serving_version(
        offline_settings, pg, redis_client, tmp_path):
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    v2 = switched_unrecorded(cfg, pg, redis_client, tmp_path)

    state = pipeline.publish_step(cfg, v2)

    assert state["published"] == "v2" and state["keys_written"] == 0
    assert "already serving" in state["reason"]
    assert statuses(pg) == {"v1": ("retired", True), "v2": ("published", True)}
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v2"
    assert redis_client.exists(keys.user_cf("u1", "v2"), keys.model_items("als", "v2")) == 2


@pytest.mark.integration
def test_a_retry_finding_its_version_serving_waits_for_another_publish(
        offline_settings, pg, redis_client, tmp_path):
    """The retry's retire ran outside the publish lock: it gave the keys another publisher was
    still writing (v3) an expiry, so v3 would lose its lists an hour after its switch."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    v2 = switched_unrecorded(cfg, pg, redis_client, tmp_path)
    v3_key = keys.user_cf("u1", "v3")

    with ThreadPoolExecutor(1) as pool:
        with publish.held_lock(redis.Redis.from_url(cfg.redis_url), "als"):
            redis_client.set(v3_key, "another publisher's, half-way")
            retry = pool.submit(pipeline.publish_step, cfg, v2)
            time.sleep(1.0)
            assert not retry.done() and redis_client.ttl(v3_key) == -1
        # Released with v3 never switched to: now a crashed publish's leftover, retired.
        assert retry.result(30)["published"] == "v2"
    assert statuses(pg) == {"v1": ("retired", True), "v2": ("published", True)}
    assert 0 < redis_client.ttl(v3_key) <= cfg.publish_grace_s


@pytest.mark.integration
def test_a_retry_re_serving_the_champion_records_it(offline_settings, pg, redis_client,
                                                     tmp_path):
    """v1 promoted by hand over v2 (a rollback) takes effect when the next run is rejected.
    Its publish switched to v1 and failed to record it; the retry found v1 serving and
    returned without recording (PostgreSQL kept v2 as the published version)."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    v1_run, v1 = logged_run(uri, "v1", tiny_als(tmp_path / "v1"))
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'retired'),"
               " ('als', 'v2', 'champion')")
    pipeline.publish_step(cfg, accepted(uri, "v2", tiny_als(tmp_path / "v2")))
    tracking.set_champion(uri, "als", v1)

    with recording_fails(pg):
        pipeline.publish_step(cfg, rejected(uri, v1_run))
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert statuses(pg) == {"v1": ("retired", False), "v2": ("published", True)}

    state = pipeline.publish_step(cfg, rejected(uri, v1_run))

    assert state["published"] == "v1"
    assert state["reason"] == "rejected by the gate: the champion (v1) serves, v1 already serving"
    assert statuses(pg) == {"v1": ("published", True), "v2": ("retired", True)}
    assert 0 < redis_client.ttl(keys.user_cf("u1", "v2")) <= cfg.publish_grace_s
    # The next rejected run finds v1 serving and recorded: its publish time stays.
    published_at = "SELECT published_at FROM models WHERE version = 'v1'"
    before = pg.execute(published_at).fetchone()
    assert pipeline.publish_step(cfg, rejected(uri, v1_run))["published"] == "v1"
    assert pg.execute(published_at).fetchone() == before


@pytest.mark.integration
def test_a_run_no_longer_the_champion_is_not_published(offline_settings, pg, redis_client,
                                                       tmp_path):
    """Two runs at once (a backfill beside the schedule, `reco train` beside the DAG): v1
    passed its gate, then v2 passed and was promoted and published. v1's publish, late,
    published v1 over the champion."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    v1 = accepted(uri, "v1", tiny_als(tmp_path / "v1"))
    v2 = accepted(uri, "v2", tiny_als(tmp_path / "v2"))
    pipeline.publish_step(cfg, v2)

    state = pipeline.publish_step(cfg, v1)

    assert state["published"] is None
    assert state["reason"].startswith(f"skipped: run {v1['run_id']} is no longer the als "
                                      f"champion (now: registry version 2 (run {v2['run_id']}))")
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v2"
    assert not redis_client.exists(keys.user_cf("u1", "v1"))
    tags = tracking.client(uri).get_run(v1["run_id"]).data.tags
    assert tags["publish"] == "skipped" and tags["publish.reason"] == state["reason"][9:]
    # Nor is a rejected run's champion once another replaced it (here by hand, v1 again).
    tracking.set_champion(uri, "als", "1")
    state = pipeline.publish_step(cfg, rejected(uri, v2["run_id"]))
    assert state["published"] is None and "no longer the als champion" in state["reason"]
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v2"


@pytest.mark.integration
def test_a_gate_waits_for_another_gate_or_publish_of_its_model(offline_settings, pg, tmp_path):
    """Two gates reading one champion could both promote; the later alias won, whichever
    window its run was trained on. A gate now holds the model's publish lock."""
    import json

    from tests.offline.test_gate import report

    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    run_id, registry_version = logged_run(cfg.mlflow_tracking_uri, "v1", tiny_als(tmp_path / "m"))
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'trained')")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report(0.3, 0.1)))
    evaluated = {"report": str(path), "run_id": run_id, "registry_version": registry_version,
                 "version": "v1"}

    with ThreadPoolExecutor(1) as pool:
        with publish.held_lock(redis.Redis.from_url(cfg.redis_url), "als"):
            gated = pool.submit(pipeline.gate_step, cfg, evaluated)
            time.sleep(1.0)
            assert not gated.done() and tracking.champion(cfg.mlflow_tracking_uri, "als") is None
        assert gated.result(30)["gate"]["accepted"]
    assert tracking.champion(cfg.mlflow_tracking_uri, "als") == (registry_version, run_id)


@pytest.mark.integration
def test_a_held_run_is_not_promoted_and_the_champion_keeps_serving(offline_settings, pg,
                                                                   redis_client, tmp_path):
    """A manual experiment passed the gate on its lift and was served within 90 s."""
    from tests.offline.test_gate import report

    hold = "an experiment (hyperparameters overridden) with promote 'auto'"
    cfg = dataclasses.replace(
        pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run"),
        hold=hold)
    uri = cfg.mlflow_tracking_uri
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion'),"
               " ('als', 'v2', 'trained')")
    v1 = accepted(uri, "v1", tiny_als(tmp_path / "v1"))
    tracking.log_metrics(uri, v1["run_id"], {"model.ndcg_at_10": 0.3,
                                             "popularity.ndcg_at_10": 0.1})
    pipeline.publish_step(cfg, v1)
    run_id, registry_version = logged_run(uri, "v2", tiny_als(tmp_path / "v2"))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report(0.3, 0.1, split="another")))
    evaluated = {"report": str(path), "run_id": run_id, "registry_version": registry_version,
                 "version": "v2", "model_dir": str(tmp_path / "v2")}

    gated = pipeline.gate_step(cfg, evaluated)
    state = pipeline.publish_step(cfg, gated)

    assert gated["gate"]["held"] and not gated["gate"]["accepted"]
    assert f"not promoted: {hold}; to serve it, move the als model's `champion` alias to " \
           f"version {registry_version}" in gated["gate"]["reason"]
    assert tracking.champion(uri, "als")[0] == "1"
    assert state["published"] == "v1"
    assert state["reason"] == "held by its promote param: the champion (v1) serves, v1 " \
                              "already serving"
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert statuses(pg)["v2"] == ("held", False)
    tags = tracking.client(uri).get_run(run_id).data.tags
    assert (tags["gate"], tags["publish"], tags["publish.reason"]) == (
        "held", "skipped", state["reason"])


@pytest.mark.integration
def test_a_rejected_run_says_why_it_was_not_published(offline_settings, pg, redis_client,
                                                      tmp_path):
    """The README promised `publish.reason` on runs whose publish was skipped; a run the gate
    rejected got none."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    no_champion = rejected(uri, None)
    state = pipeline.publish_step(cfg, no_champion)
    assert state["reason"] == "rejected by the gate and no champion to serve"
    tags = tracking.client(uri).get_run(no_champion["run_id"]).data.tags
    assert (tags["publish"], tags["publish.reason"]) == ("skipped", state["reason"])

    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    v1 = accepted(uri, "v1", tiny_als(tmp_path / "v1"))
    pipeline.publish_step(cfg, v1)
    later = rejected(uri, v1["run_id"])
    state = pipeline.publish_step(cfg, later)
    assert state["reason"] == "rejected by the gate: the champion (v1) serves, v1 already serving"
    tags = tracking.client(uri).get_run(later["run_id"]).data.tags
    assert (tags["publish"], tags["publish.reason"]) == ("skipped", state["reason"])


@pytest.mark.integration
def test_a_champion_never_published_is_retired_when_a_later_version_is(settings, pg):
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'published'),"
               " ('als', 'v2', 'champion'), ('als', 'v3', 'champion'),"
               " ('als', 'v4', 'rejected'), ('item2vec', 'v1', 'champion')")

    publish.record_published(pg, "als", "v3")

    assert statuses(pg) == {"v1": ("retired", False), "v2": ("retired", False),
                            "v3": ("published", True), "v4": ("rejected", False)}
    assert pg.execute("SELECT status FROM models WHERE name = 'item2vec'").fetchone() == (
        "champion",)


@pytest.mark.integration
def test_recording_a_publish_is_one_transaction(settings, pg):
    """If marking the new version fails, the previous one is not retired either."""
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'published'),"
               " ('als', 'v2', 'champion')")
    with psycopg.connect(settings.database_url) as locker, \
            psycopg.connect(settings.database_url, autocommit=True) as conn:
        # Another session holds v2's row: the second UPDATE times out, after the first ran.
        locker.execute("SELECT 1 FROM models WHERE version = 'v2' FOR UPDATE")
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            publish.record_published(conn, "als", "v2")
        locker.rollback()
    assert statuses(pg) == {"v1": ("published", False), "v2": ("champion", False)}


def latest_run(uri: str, model: str):
    mlflow = tracking.client(uri)
    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENTS[model]).experiment_id
    return mlflow.search_runs([experiment], order_by=["attribute.start_time DESC"],
                              max_results=1)[0]


@pytest.mark.spark
@pytest.mark.integration
def test_reco_train_says_why_a_window_cannot_train_without_a_traceback(offline_settings,
                                                                       spark):
    from tests.offline.test_champion import cli

    result = cli(offline_settings, "train", "als", "--window-end", "2001-01-01",
                 "--window-days", "1")

    assert result.exit_code == 1, result.output
    assert ("no training events between 2000-12-31 00:00:00+00:00 and 2001-01-01 "
            "00:00:00+00:00" in " ".join(result.stderr.split()))
    assert "Traceback" not in result.output


@pytest.mark.spark
@pytest.mark.integration
def test_failed_train_and_evaluate_end_their_run_failed_and_a_retry_finishes_it(
        offline_settings, small_events, spark, pg, tmp_path, mlflow_artifacts):
    cfg = pipeline.config_from_settings(
        offline_settings, "als", run_dir=tmp_path / "run", engine="local", window_days=30,
        window_end=small_events["end"], params={"factors": 8, "iterations": 5})
    uri = cfg.mlflow_tracking_uri
    extracted = pipeline.extract_step(cfg, spark)

    def models_on_disk() -> set[str]:
        return {p.parent.parent.name
                for p in mlflow_artifacts.glob("*/models/*/artifacts/MLmodel")}

    def logged_models(run: str) -> list[str]:
        return [m.model_id for m in tracking.client(uri).search_logged_models(
            experiment_ids=[latest_run(uri, "als").info.experiment_id],
            filter_string=f"source_run_id = '{run}'")]

    before = models_on_disk()
    # Trained, then the models row cannot be written.
    with pytest.raises(psycopg.OperationalError):
        pipeline.train_step(down(cfg), extracted)
    failed = latest_run(uri, "als")
    assert failed.data.params["dataset.window_end"] == cfg.window_end
    assert failed.info.status == "FAILED"
    # Its model was logged and registered: both deleted, files included (the retry logs its own).
    assert models_on_disk() == before
    assert logged_models(failed.info.run_id) == []
    assert not tracking.client(uri).search_model_versions(f"run_id = '{failed.info.run_id}'")

    trained = pipeline.train_step(cfg, extracted)
    run_id = trained["run_id"]
    with pytest.raises(FileNotFoundError):  # the evaluated model is missing
        pipeline.evaluate_step(cfg, {**trained, "eval_model_dir": str(tmp_path / "none")})
    assert tracking.client(uri).get_run(run_id).info.status == "FAILED"
    # Scored and logged, then the metrics cannot reach the models table.
    with pytest.raises(psycopg.OperationalError):
        pipeline.evaluate_step(down(cfg), trained)
    assert tracking.client(uri).get_run(run_id).info.status == "FAILED"

    evaluated = pipeline.evaluate_step(cfg, trained)  # Airflow's retry

    run = tracking.client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["model.ndcg_at_10"] == evaluated["metrics"]["model.ndcg_at_10"]
    # The registry version is the run's MLflow model, which carries the scores too.
    logged = tracking.client(uri).get_logged_model(trained["model_id"])
    assert logged.source_run_id == run_id and logged.status == "READY"
    assert logged_models(run_id) == [logged.model_id]
    assert models_on_disk() == before | {logged.model_id}
    assert logged.params["factors"] == "8" and logged.params["engine"] == "local"
    assert {m.key: m.value for m in logged.metrics}["model.ndcg_at_10"] == \
        evaluated["metrics"]["model.ndcg_at_10"]
    mv = tracking.client(uri).get_model_version("als", trained["registry_version"])
    assert mv.source == f"models:/{trained['model_id']}" and mv.run_id == run_id
    row = pg.execute("SELECT metrics FROM models WHERE name = 'als' AND version = %s",
                     (trained["version"],)).fetchone()
    assert row[0]["model.ndcg_at_10"] == evaluated["metrics"]["model.ndcg_at_10"]


@pytest.mark.spark
@pytest.mark.integration
def test_a_window_without_events_is_a_bad_run_input(offline_settings, spark, pg, tmp_path):
    """Retrying cannot find events the window does not hold: the DAG task fails at once."""
    from spark_jobs import BadRunInput

    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run",
                                        window_days=7, window_end=datetime(2020, 1, 8))
    with pytest.raises(BadRunInput, match=r"^no training events between 2020-01-01 00:00:00"
                                          r"\+00:00 and 2020-01-08 00:00:00\+00:00: the window "
                                          r"\(window_end, window_days\) holds none$"):
        pipeline.extract_step(cfg, spark)


@pytest.mark.spark
@pytest.mark.integration
def test_a_spark_item2vec_run_logs_only_the_parameters_spark_trains_with(
        offline_settings, small_events, spark, pg, tmp_path):
    """Spark's Word2Vec has no negative sampling: its runs showed `negative`, `ns_exponent` and
    `sample` in MLflow as if they had shaped the model, and took them as overrides."""
    common = {"engine": "spark", "window_days": 30, "window_end": small_events["end"]}
    with pytest.raises(ValueError, match=r"^item2vec parameters \['negative', 'sample'\] do "
                                         r"not apply to engine 'spark': Spark's Word2Vec"):
        pipeline.config_from_settings(offline_settings, "item2vec", run_dir=tmp_path / "bad",
                                      params={"negative": 10, "sample": 0.0, "window": 2},
                                      **common)
    cfg = pipeline.config_from_settings(
        offline_settings, "item2vec", run_dir=tmp_path / "run",
        params={"vector_size": 8, "epochs": 2}, **common)
    trained = pipeline.train_step(cfg, pipeline.extract_step(cfg, spark), spark)

    logged = tracking.client(cfg.mlflow_tracking_uri).get_run(trained["run_id"]).data.params
    assert {"negative", "ns_exponent", "sample"}.isdisjoint(logged)
    assert (logged["vector_size"], logged["epochs"], logged["window"]) == ("8", "2", "3")
    written = json.loads((Path(trained["model_dir"]) / "params.json").read_text())
    assert {"negative", "ns_exponent", "sample"}.isdisjoint(written)
    assert written["engine"] == "spark" and written["vector_size"] == 8
