"""The archiver's statement on a real PostgreSQL: events once, users with their first event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from aiokafka.structs import ConsumerRecord

from reco.settings import Settings
from streaming.archiver import Archiver

T_MS = 1_760_000_000_000


def record(user: str, t_ms: int, offset: int) -> ConsumerRecord:
    value = orjson.dumps({"event_id": str(uuid.uuid4()), "user_id": user, "item_id": "A",
                          "event_type": "view", "timestamp": t_ms})
    return ConsumerRecord("events", 0, offset, t_ms, 0, user.encode(), value, None, 0, 0, [])


def first_seen(pg: psycopg.Connection) -> dict[str, datetime]:
    return dict(pg.execute("SELECT user_id, first_seen FROM users").fetchall())


def at(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC)


async def test_users_keep_their_earliest_event_across_batches(pg: psycopg.Connection,
                                                              settings: Settings) -> None:
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", T_MS, 0), record("u1", T_MS + 5, 1)])
        assert first_seen(pg) == {"u1": at(T_MS)}

        # A later batch with an earlier event of u1 (a late event) and a new user.
        late = [record("u1", T_MS - 100, 2), record("u2", T_MS + 7, 3), record("u1", T_MS + 9, 4)]
        await archiver(late)
        assert first_seen(pg) == {"u1": at(T_MS - 100), "u2": at(T_MS + 7)}

        # Redelivered: no event twice, and users unchanged.
        await archiver(late)
        assert pg.execute("SELECT count(*) FROM events").fetchone()[0] == 5
        assert first_seen(pg) == {"u1": at(T_MS - 100), "u2": at(T_MS + 7)}
    finally:
        await archiver.close()


async def test_a_statement_that_hangs_times_out_and_the_retry_archives(
        pg: psycopg.Connection, settings: Settings) -> None:
    """A statement that never returns (here: a table lock held elsewhere, as a half-open
    connection would look) fails after `archiver_pg_timeout_s` instead of holding the batch,
    and the retry, on a new connection, archives it."""
    archiver = Archiver(settings.model_copy(update={"archiver_pg_timeout_s": 1.0}))
    batch = [record("u1", T_MS, 0)]
    try:
        with psycopg.connect(settings.database_url) as holder:
            holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TimeoutError):
                await archiver(batch)
            holder.rollback()
        await archiver(batch)
        assert pg.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    finally:
        await archiver.close()
