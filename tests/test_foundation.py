"""The foundation against real servers: migrations, topics, settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
import sqlalchemy
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql
from pydantic import SecretStr

from reco import db
from reco.settings import Settings
from reco.stack.health import wait_until

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


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in meta}


def test_topics_created_with_partitions(settings: Settings, kafka_topics: dict[str, str]) -> None:
    assert asyncio.run(_partitions(settings.kafka_bootstrap, [
        settings.topic_events, settings.topic_dlq])) == {settings.topic_events: 3,
                                                         settings.topic_dlq: 1}


def test_reco_topics_create_makes_the_topics_the_settings_name(kafka_server) -> None:
    """docker-compose's kafka-init runs it, so the topic settings hold there as in `reco up`."""
    name = f"shop-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_server.port}",
           "RECO_TOPIC_EVENTS": name, "RECO_TOPIC_DLQ": f"{name}.dlq",
           "RECO_TOPIC_PARTITIONS": "2"}
    reco = str(Path(sys.executable).with_name("reco"))
    for _ in range(2):  # the second run finds them
        result = subprocess.run([reco, "topics", "create"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"{name} (2 partitions), {name}.dlq (1 partitions)" in result.stdout
    assert asyncio.run(_partitions(env["RECO_KAFKA_BOOTSTRAP"], [name, f"{name}.dlq"])) == {
        name: 2, f"{name}.dlq": 1}


def test_production_refuses_local_password() -> None:
    with pytest.raises(ValueError, match="RECO_PG_PASSWORD"):
        Settings(env="production")


def test_settings_read_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_W_COVIEW", "0.7")
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", '{"view": 2, "click": 3, "cart": 5, "purchase": 9}')
    s = Settings()
    assert s.w_coview == 0.7
    assert s.event_weight("view") == 2.0 and s.event_weight("purchase") == 9.0


PASSWORD_WITH_URL_CHARACTERS = "Zx9/k+Q@w%$x==:?#&"


@pytest.fixture
def password_role(pg: psycopg.Connection, postgres_server) -> Iterator[str]:
    """A role that must give PASSWORD_WITH_URL_CHARACTERS: the test server trusts loopback
    connections, so this role alone gets a password check (prepended to pg_hba.conf)."""
    role = "reco_url_chars"
    hba = postgres_server.workdir / "data" / "pg_hba.conf"
    before = hba.read_text()
    admin = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD_WITH_URL_CHARACTERS)))
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + before)
        conn.execute("SELECT pg_reload_conf()")  # a signal: the server reloads soon after
        wrong = f"postgresql://{role}:wrong@127.0.0.1:{postgres_server.port}/postgres"
        assert wait_until(lambda: _refused(wrong), 10), "pg_hba.conf was not reloaded"
        try:
            yield role
        finally:
            hba.write_text(before)
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP ROLE {role}")


def _refused(url: str) -> bool:
    try:
        psycopg.connect(url).close()
    except psycopg.OperationalError as exc:
        return "password authentication failed" in str(exc)
    return False


def test_a_password_with_url_characters_reaches_every_client(password_role: str,
                                                             settings: Settings) -> None:
    """psycopg (migrations, training), asyncpg (ingest, archiver) and SQLAlchemy (MLflow,
    Airflow) all authenticate with the escaped URL."""
    good = settings.model_copy(update={"pg_user": password_role,
                                       "pg_password": SecretStr(PASSWORD_WITH_URL_CHARACTERS)})
    with psycopg.connect(good.database_url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == password_role

    async def asyncpg_user() -> str:
        conn = await asyncpg.connect(good.database_url, timeout=5)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()
    assert asyncio.run(asyncpg_user()) == password_role

    engine = sqlalchemy.create_engine(good.pg_url(good.pg_database, driver="postgresql+psycopg2"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == password_role
    finally:
        engine.dispose()


def test_event_weights_given_for_some_types_keep_the_defaults_of_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing type stopped the processor at that type's first event."""
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", '{"purchase": 20}')
    assert Settings().event_weights == {"view": 1.0, "click": 3.0, "cart": 5.0, "purchase": 20.0}


@pytest.mark.parametrize(("weights", "refusal"), [
    ('{"like": 2}', r"unknown event types: \['like'\]"),
    ('{"view": -1}', r"the weights of \['view'\] must be finite and >= 0"),
    ('{"cart": "NaN"}', r"the weights of \['cart'\] must be finite and >= 0"),
])
def test_event_weights_refused_name_the_type(monkeypatch: pytest.MonkeyPatch, weights: str,
                                              refusal: str) -> None:
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", weights)
    with pytest.raises(ValueError, match=refusal):
        Settings()


def test_a_cache_ttl_of_zero_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """SET ... EX 0 is an error: every cache write failed, logged once a minute."""
    monkeypatch.setenv("RECO_CACHE_TTL_S", "0")
    with pytest.raises(ValueError, match="cache_ttl_s"):
        Settings()


def test_redis_persists_by_its_append_only_file_alone(redis_client) -> None:
    """As the stack starts it (tests/servers.py uses its command): snapshots every minute of
    traffic beside the append-only file rewrote the whole dataset each time."""
    assert redis_client.config_get("save") == {"save": ""}
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
