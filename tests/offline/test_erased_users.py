"""Publishing a model leaves out the users erased after it read its data (the training run in
progress, a rollback to an older champion), and keeps users who came back after an erasure
that its data already reflected."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from reco import keys
from reco.privacy import pseudonym
from spark_jobs import champion, erased_users, pipeline, publish, tracking
from streaming.feature_store import FeatureStore
from streaming.messages import StreamErasure
from streaming.redis_pipe import RedisPipe
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
               (pseudonym(user, cfg.pseudonym_keys[0]), at, at))


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


@pytest.mark.parametrize("keeps_the_old_key", [True, False])
def test_erasures_recorded_before_a_key_rotation_match_while_the_old_key_is_listed(
        offline_settings, pg, redis_client, tmp_path, keeps_the_old_key):
    """u1's erasure was recorded in PostgreSQL, u2's in Redis, under the key used then; the
    key changed since."""
    old = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "old")
    erased(pg, old, "u1", NOW)
    redis_client.zadd(keys.USER_ERASURES, {keys.user_erasure_member(
        pseudonym("u2", old.pseudonym_keys[0]), str(uuid.uuid4())): 1})
    rotated = offline_settings.model_copy(update={
        "log_pseudonym_key": SecretStr("new-pseudonym-key-0123456789"),
        "log_pseudonym_previous_keys": [offline_settings.log_pseudonym_key]
        if keeps_the_old_key else []})
    cfg = pipeline.config_from_settings(rotated, "als", run_dir=tmp_path / "run")
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW - timedelta(hours=1))))

    published = {u for u in ("u1", "u2") if redis_client.exists(keys.user_cf(u, "v1"))}
    assert published == (set() if keeps_the_old_key else {"u1", "u2"})


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


def erase_through_the_processor(settings, user: str) -> None:
    """The processor applying `user`'s erasure (real Redis)."""
    async def run() -> None:
        client = RedisPipe(settings.redis_url)
        try:
            erasure = StreamErasure(str(uuid.uuid4()), user, 0, 0, int(time.time() * 1000))
            await FeatureStore(client, settings).apply([], [erasure])
        finally:
            await client.close()

    asyncio.run(run())


def publish_erasing_u1(monkeypatch, offline_settings, pg, tmp_path, when: str) -> None:
    """Publish v1 (one key per pipelined batch) while the processor erases u1: after the
    first key, before u1's list is written ("writing"), or once every list is written and
    the publish's last look is done, just before its switch ("switching")."""
    cfg = dataclasses.replace(
        pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run"),
        publish_batch=1)
    original = publish.publish_locked

    def erasing(*args, **kwargs):
        if when == "writing":
            erased_once: list[int] = []

            def after_batch(written: int) -> None:
                if not erased_once:
                    erased_once.append(written)
                    erase_through_the_processor(offline_settings, "u1")
            kwargs["after_batch"] = after_batch
        else:
            last_look = kwargs["before_switch"]

            def before_switch() -> None:
                last_look()
                erase_through_the_processor(offline_settings, "u1")
            kwargs["before_switch"] = before_switch
        return original(*args, **kwargs)

    monkeypatch.setattr(publish, "publish_locked", erasing)
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW)))


@pytest.mark.parametrize("when", ["writing", "switching"])
def test_an_erasure_applied_while_the_version_is_written_leaves_none_of_its_lists(
        monkeypatch, offline_settings, pg, redis_client, tmp_path, when):
    """Writing: the processor deletes the serving version's lists only, and u1's new list is
    written after: the publish's last look deletes it. Switching: the last look came before
    the erasure, which deletes the announced version's list itself."""
    publish_erasing_u1(monkeypatch, offline_settings, pg, tmp_path, when)
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert not redis_client.hexists(keys.MODEL_PUBLISHING, "als")
    assert not redis_client.exists(keys.user_cf("u1", "v1"))
    assert redis_client.exists(keys.user_cf("u2", "v1"))


def recorded_by_the_processor(redis_client, cfg, user: str, erasure_id: str,
                              at: datetime) -> None:
    member = keys.user_erasure_member(pseudonym(user, cfg.pseudonym_keys[0]), erasure_id)
    redis_client.zadd(keys.USER_ERASURES, {member: int(at.timestamp() * 1000)})


@pytest.mark.parametrize("archived_before_the_read", [False, True])
def test_an_erasure_the_processor_applied_counts_until_the_archiver_shows_it_came_first(
        offline_settings, pg, redis_client, tmp_path, archived_before_the_read):
    """The processor erased u1 three hours ago; the model read its data an hour ago. Without
    the archiver's record (it lags: u1's events may still have been read) u1 is left out; with
    it applied before the read, u1 came back and the model knows only what followed."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    erasure_id = str(uuid.uuid4())
    recorded_by_the_processor(redis_client, cfg, "u1", erasure_id, NOW - timedelta(hours=3))
    if archived_before_the_read:
        at = NOW - timedelta(hours=3)
        pg.execute("INSERT INTO user_erasures (erasure_id, user_pseudonym, requested_at,"
                   " erased_at, events_deleted) VALUES (%s, %s, %s, %s, 1)",
                   (erasure_id, pseudonym("u1", cfg.pseudonym_keys[0]), at, at))
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW - timedelta(hours=1))))
    assert bool(redis_client.exists(keys.user_cf("u1", "v1"))) is archived_before_the_read
    assert redis_client.exists(keys.user_cf("u2", "v1"))


def test_an_entry_without_an_erasure_id_counts_and_stops_nothing(
        offline_settings, pg, redis_client, tmp_path):
    """A member written otherwise (by hand: the pseudonym alone) is an erasure that always
    counts, not a publish failing on it for 90 days."""
    cfg = pipeline.config_from_settings(offline_settings, "als", run_dir=tmp_path / "run")
    redis_client.zadd(keys.USER_ERASURES, {pseudonym("u1", cfg.pseudonym_keys[0]): 1})
    pg.execute("INSERT INTO models (name, version, status) VALUES ('als', 'v1', 'champion')")
    pipeline.publish_step(cfg, accepted(cfg.mlflow_tracking_uri, "v1",
                                        trained(tmp_path / "v1", NOW - timedelta(hours=1))))
    assert not redis_client.exists(keys.user_cf("u1", "v1"))
    assert redis_client.exists(keys.user_cf("u2", "v1"))
    assert not redis_client.hexists(keys.MODEL_PUBLISHING, "als")
