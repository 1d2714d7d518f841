"""The archiver's statement on a real PostgreSQL: events once, users with their first event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from aiokafka.structs import ConsumerRecord

from reco.settings import Settings
from streaming.applied_positions import Position, find_rewrites, spans_of
from streaming.archiver import Archiver, At

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


def positions(pg: psycopg.Connection) -> list[tuple[int, int, int]]:
    return pg.execute("SELECT kafka_partition, next_offset, newest_ms FROM archived_positions "
                      "ORDER BY kafka_partition").fetchall()


async def test_a_recreated_topics_records_are_archived_though_below_the_position(
        pg: psycopg.Connection, settings: Settings) -> None:
    """Offsets start again at 0 in a topic made again; its records are newer than any archived,
    which no record below the archived offset of the same log can be."""
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", T_MS + i, i) for i in range(5)])
        assert positions(pg) == [(0, 5, T_MS + 4)]
        again = [record("u2", T_MS + 1_000 + i, i) for i in range(2)]
        await archiver(again)
        assert positions(pg) == [(0, 2, T_MS + 1_001)]
        await archiver([*again, record("u2", T_MS + 1_001, 2)])  # its newest time, a new offset
        assert pg.execute("SELECT count(*) FROM events WHERE user_id = 'u2'").fetchone()[0] == 3
        assert positions(pg) == [(0, 3, T_MS + 1_001)]
    finally:
        await archiver.close()


def test_rewrites_are_the_records_below_the_stored_position() -> None:
    at = [At(0, 8, 108), At(1, 3, 203), At(0, 9, 109), At(0, 10, 110), At(2, 0, 300)]
    stored = {0: Position(10, 109), 1: Position(2, 201), 2: None}
    replays = find_rewrites(at, spans_of(at), stored, "events")
    assert replays.applied == {0, 2}
    assert replays.positions == {0: Position(11, 110), 1: Position(4, 203), 2: Position(1, 300)}
