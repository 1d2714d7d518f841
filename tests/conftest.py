"""Session-wide real servers (PostgreSQL, Redis, Kafka) and per-test isolation."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from reco import db
from reco.settings import Settings
from reco.stack import servers as stack_servers
from reco.topics import ensure_topics
from tests import servers

APP_TABLES = ("events", "items", "users", "models", "user_erasures", "archived_positions")
# py4j logs "Closing down clientserver connection" from a destructor at interpreter exit, after
# pytest closed the streams its handlers write to: a "--- Logging error ---" trace after the run.
logging.getLogger("py4j").setLevel(logging.WARNING)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # After the session's fixtures stopped their servers; a failing session keeps the folders'
    # server logs for whoever looks into it.
    if exitstatus == 0:
        servers.remove_scratch_dirs()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.ServerProcess]:
    server = servers.start_postgres()
    try:
        yield server
    finally:
        servers.remove(server)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.ServerProcess]:
    server = servers.start_redis()
    try:
        yield server
    finally:
        servers.remove(server)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[servers.ServerProcess]:
    server = servers.start_kafka()
    try:
        yield server
    finally:
        servers.remove(server)


@pytest.fixture(scope="session")
def _migrated_database(postgres_server: servers.ServerProcess) -> str:
    base = Settings(pg_port=postgres_server.port)
    stack_servers.ensure_databases(
        postgres_server.port, base.pg_user, base.pg_password.get_secret_value(),
        [base.pg_database, base.pg_mlflow_database, base.pg_airflow_database],
    )
    db.migrate(base)
    return base.pg_database


# Tests rotate through Redis databases 1..63 (each flushed first); db 0 is left unused.
_redis_dbs = itertools.cycle(range(1, 64))


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    """Settings pointing at the servers this test asked for; other servers stay unstarted."""
    overrides: dict = {"state_dir": tmp_path / "state"}
    names = request.fixturenames
    if "pg" in names or "postgres_server" in names:
        overrides["pg_port"] = request.getfixturevalue("postgres_server").port
    if "redis_client" in names or "redis_server" in names:
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    if "kafka_topics" in names or "kafka_server" in names:
        kafka = request.getfixturevalue("kafka_server")
        overrides["kafka_bootstrap"] = f"127.0.0.1:{kafka.port}"
        overrides.update(request.getfixturevalue("kafka_topics"))
    return Settings(**overrides)


@pytest.fixture
def pg(
    _migrated_database: str, postgres_server: servers.ServerProcess
) -> Iterator[psycopg.Connection]:
    """A connection to the migrated app database, emptied before each test."""
    url = Settings(pg_port=postgres_server.port).database_url
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():  # the events log refuses TRUNCATE unless told (sql/006)
            conn.execute("SELECT set_config('reco.allow_truncate', 'on', true)")
            conn.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY")
        yield conn


@pytest.fixture
def redis_url(redis_server: servers.ServerProcess) -> str:
    """A Redis database of its own for each test (flushed first)."""
    number = next(_redis_dbs)
    url = f"redis://127.0.0.1:{redis_server.port}/{number}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def kafka_topics(kafka_server: servers.ServerProcess) -> dict[str, str]:
    """Unique topic and group names for one test, created on the session broker."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "topic_events": f"events-{suffix}",
        "topic_dlq": f"events.dlq-{suffix}",
        "group_processor": f"reco-processor-{suffix}",
        "group_archiver": f"event-archiver-{suffix}",
    }
    bootstrap = f"127.0.0.1:{kafka_server.port}"
    asyncio.run(ensure_topics(bootstrap, {names["topic_events"]: 3, names["topic_dlq"]: 1}))
    return names
