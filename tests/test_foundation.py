"""The foundation against real servers: migrations, topics, settings."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from reco import db
from reco.settings import Settings

pytestmark = pytest.mark.integration


def test_migrate_is_idempotent(pg: psycopg.Connection, settings: Settings) -> None:
    assert db.migrate(settings) == []  # the fixture applied everything already
    versions = [r[0] for r in pg.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [p.stem for p in db.migration_files()]


def test_events_table_is_append_only_and_unique(pg: psycopg.Connection) -> None:
    insert = (
        "INSERT INTO events (event_id, user_id, item_id, event_type, event_time) "
        "VALUES ('00000000-0000-0000-0000-000000000001', 'u1', 'i1', 'view', now())"
    )
    pg.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg.execute(insert)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE"):
        pg.execute("UPDATE events SET item_id = 'i2'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: DELETE"):
        pg.execute("DELETE FROM events")
    assert pg.execute("SELECT item_id FROM events").fetchall() == [("i1",)]


def test_event_type_is_checked(pg: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, event_time) "
            "VALUES (gen_random_uuid(), 'u1', 'i1', 'like', now())"
        )


def test_topics_created_with_partitions(settings: Settings, kafka_topics: dict[str, str]) -> None:
    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            meta = await admin.describe_topics([settings.topic_events, settings.topic_dlq])
        finally:
            await admin.close()
        return {t["topic"]: len(t["partitions"]) for t in meta}

    assert asyncio.run(describe()) == {settings.topic_events: 3, settings.topic_dlq: 1}


def test_production_refuses_local_password() -> None:
    with pytest.raises(ValueError, match="RECO_PG_PASSWORD"):
        Settings(env="production")


def test_settings_read_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_W_COVIEW", "0.7")
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", '{"view": 2, "click": 3, "cart": 5, "purchase": 9}')
    s = Settings()
    assert s.w_coview == 0.7
    assert s.event_weight("view") == 2.0 and s.event_weight("purchase") == 9.0
