"""Publishing a model leaves out the users erased after it read its data (the training run in
progress, a rollback to an older champion), and keeps users who came back after an erasure
that its data already reflected."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reco import keys
from reco.privacy import pseudonym
from spark_jobs import champion, erased_users, pipeline, tracking
from tests.offline.test_pipeline_steps import accepted, tiny_als

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)


def trained(folder: Path, read_at: datetime | None) -> Path:
    """tiny_als's users u1 and u2, with when its extract read its data (None: not kept)."""
    tiny_als(folder)
    if read_at is not None:
        (folder / "params.json").write_text(json.dumps({erased_users.READ_AT:
                                                        read_at.isoformat()}))
    return folder


def erased(pg, cfg: pipeline.PipelineConfig, user: str, at: datetime) -> None:
    pg.execute("INSERT INTO user_erasures (erasure_id, user_pseudonym, requested_at, erased_at,"
               " events_deleted) VALUES (gen_random_uuid(), %s, %s, %s, 3)",
               (pseudonym(user, cfg.log_pseudonym_key), at, at))


@pytest.mark.parametrize(("read_hours_ago", "erased_hours_ago", "u1_published"), [
    (2.0, 1.0, False),  # erased after the read: the model still holds u1
    (1.0, 2.0, True),  # erased before it: u1 came back, the model knows only what followed
    (None, 2.0, False),  # a model that does not say when it read: left out
])
def test_a_publish_leaves_out_users_erased_after_the_models_data_was_read(
        offline_settings, pg, redis_client, tmp_path, read_hours_ago, erased_hours_ago,
        u1_published):
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    read_at = None if read_hours_ago is None else NOW - timedelta(hours=read_hours_ago)
    erased(pg, cfg, "u1", NOW - timedelta(hours=erased_hours_ago))
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", read_at)))

    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert bool(redis_client.exists(keys.user_cf("u1", "v1"))) is u1_published
    assert redis_client.exists(keys.user_cf("u2", "v1"))


def test_a_rollback_to_a_champion_trained_before_an_erasure_leaves_the_user_out(
        offline_settings, pg, redis_client, tmp_path):
    """v1 read its data, then u1 was erased (the processor deleting u1's v2 list); rolling back
    to v1 in MLflow within the grace period, while v1's lists still expire in Redis, must not
    serve u1's v1 list again."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    uri = cfg.mlflow_tracking_uri
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion'),"
               " ('als', 'v2', 'champion')")
    pipeline.publish_step(cfg, accepted(uri, "v1", trained(tmp_path / "v1", NOW)))
    pipeline.publish_step(cfg, accepted(uri, "v2", trained(tmp_path / "v2", NOW)))
    assert redis_client.ttl(keys.user_cf("u1", "v1")) > 0  # expiring, still there
    erased(pg, cfg, "u1", NOW + timedelta(minutes=30))

    tracking.set_champion(uri, "als", "1")
    assert champion.serve_champion(cfg)["published"] == "v1"
    assert not redis_client.exists(keys.user_cf("u1", "v1"))
    assert redis_client.exists(keys.user_cf("u2", "v1"))


def test_an_erasure_the_processor_applied_while_the_version_was_written_is_caught(
        offline_settings, pg, redis_client, tmp_path):
    """The processor recorded u1's erasure (Redis) after the publish's first look and before
    its switch, and the archiver has not yet (PostgreSQL): u1's new list goes after the switch.
    (The model read its data 'after' the erasure's time here, so only the second look sees it.)"""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    key = cfg.log_pseudonym_key
    in_a_minute = int((NOW + timedelta(minutes=1)).timestamp() * 1000)
    redis_client.zadd(keys.USER_ERASURES, {pseudonym("u1", key): in_a_minute})
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW + timedelta(hours=1))))
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert not redis_client.exists(keys.user_cf("u1", "v1"))
    assert redis_client.exists(keys.user_cf("u2", "v1"))


def test_erasures_the_processor_recorded_count_before_the_archiver_records_them(
        offline_settings, pg, redis_client, tmp_path):
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    an_hour_ago = int((NOW - timedelta(hours=1)).timestamp() * 1000)
    redis_client.zadd(keys.USER_ERASURES, {pseudonym("u2", cfg.log_pseudonym_key): an_hour_ago})
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW - timedelta(hours=2))))
    assert redis_client.exists(keys.user_cf("u1", "v1"))
    assert not redis_client.exists(keys.user_cf("u2", "v1"))
