"""Redis and PostgreSQL restarted in the middle of a stream: every event the ingest API
acknowledged lands in PostgreSQL exactly once, and the features converge to a clean run's.

Private Redis and PostgreSQL servers (this module restarts them); the session broker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import psycopg
import pytest
import redis

from reco import db
from reco.settings import Settings
from reco.stack import servers as stack_servers
from streaming.metrics import PROCESSING_ERRORS
from tests import servers
from tests.realtime.conftest import Consumers, wait_for
from tests.reliability.conftest import (
    assert_same_features,
    dump,
    make_events,
    reference_features,
    seen_count,
)
from tests.security.conftest import ingest_client  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

N, BATCH = 2400, 60


@pytest.fixture(scope="module")
def private_redis() -> Iterator[servers.ServerProcess]:
    server = servers.start_redis()
    try:
        yield server
    finally:
        servers.remove(server)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[servers.ServerProcess]:
    server = servers.start_postgres()
    try:
        base = Settings(pg_port=server.port)
        stack_servers.ensure_databases(server.port, base.pg_user,
                                       base.pg_password.get_secret_value(), [base.pg_database])
        db.migrate(base)
        yield server
    finally:
        servers.remove(server)


def failures(group: str) -> float:
    """Batches the consumer group retried (any exception type)."""
    return sum(sample.value for metric in PROCESSING_ERRORS.collect()
               for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels.get("consumer") == group)


def archived_ids(settings: Settings) -> list[str] | None:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=2) as conn:
            return [r[0] for r in conn.execute("SELECT event_id::text FROM events")]
    except psycopg.OperationalError:
        return None  # restarting


async def test_store_restarts_mid_stream(
    settings: Settings, kafka_topics: dict, private_redis, private_postgres,
    ingest_client,  # noqa: F811
) -> None:
    run = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{private_redis.port}/1",
        "pg_port": private_postgres.port, "consumer_backoff_max_s": 1.0,
        "consumer_batch_max": 100})
    r = redis.Redis.from_url(run.redis_url, decode_responses=True)
    r.flushdb()
    events = make_events(N)
    retried = {g: failures(g) for g in (run.group_processor, run.group_archiver)}
    consumers = Consumers()
    consumers.start("processor", run)
    consumers.start("archiver", run)
    acked: list[str] = []
    # Batch number -> (store, stop signal). SIGTERM: Redis persists, as a restart would;
    # SIGINT: PostgreSQL's fast shutdown, which ends the sessions.
    outages = {10: (private_redis, signal.SIGTERM), 25: (private_postgres, signal.SIGINT)}
    try:
        async with ingest_client(run) as client:
            for n, i in enumerate(range(0, N, BATCH)):
                chunk = events[i:i + BATCH]
                # A store goes down before a batch is posted, so its consumer has events to
                # write during the outage (a consumer already caught up could miss it).
                down = outages.get(n)
                if down is not None:
                    down[0].stop(down[1])
                response = await client.post("/events/batch", json={"events": chunk})
                if response.status_code == 202:
                    acked += response.json()["event_ids"]
                if down is not None:
                    await asyncio.sleep(1.5)
                    down[0].start()
                await asyncio.sleep(0.05)
        assert len(acked) == N  # ingest needs neither store

        await wait_for(lambda: sorted(archived_ids(run) or []) == sorted(acked),
                       "every acknowledged event archived", timeout_s=90)
        await wait_for(lambda: seen_count(r, events) == N, "every event applied",
                       timeout_s=90)
    finally:
        await consumers.stop_all()
    with psycopg.connect(run.database_url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    assert total == distinct == N  # exactly once
    for group, before in retried.items():
        assert failures(group) > before, f"{group} never saw the outage"
    after_faults = dump(r)
    clean = await reference_features(run, f"redis://127.0.0.1:{private_redis.port}/2", events)
    assert_same_features(after_faults, clean)
