"""Event archiver: consumer group `event-archiver`, topic `events` -> PostgreSQL `events`, and
each user's earliest event -> `users.first_seen`; a user's erasure (reco/erasure.py) deletes
the user's events and `users` row and records it in `user_erasures`.

Batches are inserted with ON CONFLICT (event_id) DO NOTHING in one transaction, and offsets are
committed only after that commit, so every acknowledged event lands exactly once however often
it is redelivered. The transaction also locks and moves on each partition's archived position
(sql/009): records below it were archived and are skipped, so a copy of the archiver still
writing a batch after the group moved its partitions on cannot undo a later erasure. While
PostgreSQL is down the batch is retried with exponential backoff and nothing is committed.
Invalid messages are skipped here and dead-lettered by the processor. Run with `reco run archiver`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson
from aiokafka.structs import ConsumerRecord

from reco import erasure
from reco.erasure import Erasure
from reco.events import Event
from reco.privacy import pseudonym
from reco.settings import Settings
from reco.timing import POSTGRES_QUERY_SECONDS, timed
from streaming import consumer as loop
from streaming.applied_positions import Position, Replays, Span, find_rewrites, spans_of
from streaming.messages import decode
from streaming.metrics import EVENTS_ARCHIVED, PROCESSING_ERRORS, USERS_ERASED, serve_metrics

log = logging.getLogger(__name__)

# One statement per batch: arrays in, duplicates (also within the batch) skipped by the key.
# The users the new rows name are recorded with their earliest event (`users.first_seen`) in
# the same statement; in user order, so two copies' batches lock shared rows in one order.
INSERT_EVENTS = """
WITH archived AS (
    INSERT INTO events (event_id, user_id, item_id, event_type, event_time, session_id,
                        context, kafka_partition, kafka_offset)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::jsonb[], $8::int[], $9::bigint[])
    ON CONFLICT (event_id) DO NOTHING
    RETURNING user_id, event_time
), seen AS (
    INSERT INTO users (user_id, first_seen)
    SELECT user_id, min(event_time) FROM archived GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET first_seen = EXCLUDED.first_seen
        WHERE EXCLUDED.first_seen < users.first_seen
)
SELECT count(*) FROM archived
"""


def event_row(event: Event, record: ConsumerRecord) -> tuple[Any, ...]:
    return (
        event.event_id, event.user_id, event.item_id, event.event_type,
        datetime.fromtimestamp(event.timestamp / 1000.0, tz=UTC), event.session_id,
        _jsonb(event.context) if event.context is not None else None,
        record.partition, record.offset,
    )


def _jsonb(value: dict[str, Any]) -> str:
    # jsonb cannot hold NUL characters: dropping them beats retrying a poison row forever.
    clean = _without_nul(value)
    try:
        return orjson.dumps(clean).decode()
    except TypeError:  # an integer beyond 64 bits (orjson refuses it; jsonb's numeric holds it)
        return json.dumps(_finite(clean))  # was a poison batch retried forever (issue 7)


def _finite(value: Any) -> Any:
    """NaN/Infinity as null, as orjson writes them (jsonb refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


# A batch's new erasures, before its inserts and in the same transaction: each erased user's
# events and `users` row go, and each erasure gets its audit row, the user's first of the
# batch with how many events went, and where it was read (KNOWN_ERASURES).
ERASE_USERS = """
WITH gone AS (
    DELETE FROM events WHERE user_id = ANY($2::text[]) RETURNING user_id
), users_gone AS (
    DELETE FROM users WHERE user_id = ANY($2::text[])
), counted AS (
    SELECT user_id, count(*) AS n FROM gone GROUP BY user_id
)
INSERT INTO user_erasures (erasure_id, user_pseudonym, requested_at, events_deleted,
                           kafka_partition, kafka_offset)
SELECT e.erasure_id, e.pseudonym, e.requested_at,
       CASE WHEN e.first THEN coalesce(c.n, 0) ELSE 0 END, e.kafka_partition, e.kafka_offset
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[], $6::int[],
            $7::bigint[])
    AS e(erasure_id, user_id, pseudonym, requested_at, first, kafka_partition, kafka_offset)
LEFT JOIN counted c USING (user_id)
ON CONFLICT (erasure_id) DO NOTHING
"""


# Where the batch's erasures the archiver applied before were read: the same record again is a
# redelivery (its batch's events before it still go); another one is a copy, sent again later
# with the same id, which must not delete the events that came after the first.
KNOWN_ERASURES = """
SELECT erasure_id::text, kafka_partition, kafka_offset FROM user_erasures
WHERE erasure_id = ANY($1::uuid[])
"""


# The batch's partitions' positions, their rows locked until the transaction ends (a no-op
# update locks an existing row; a new one holds NULLs), in partition order against deadlocks.
CLAIM_POSITIONS = """
INSERT INTO archived_positions AS a (topic, kafka_partition)
SELECT $1, p FROM unnest($2::int[]) AS p ORDER BY p
ON CONFLICT (topic, kafka_partition) DO UPDATE SET topic = a.topic
RETURNING kafka_partition, next_offset, newest_ms
"""

MOVE_POSITIONS = """
UPDATE archived_positions AS a SET next_offset = v.next_offset, newest_ms = v.newest_ms
FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS v(p, next_offset, newest_ms)
WHERE a.topic = $1 AND a.kafka_partition = v.p
"""


class At(NamedTuple):
    """Where a record sits in the topic (applied_positions.Positioned)."""

    partition: int
    offset: int
    log_ms: int


def erasure_row(erasure: Erasure, record: ConsumerRecord, pseudonym_key: str, first: bool
                ) -> tuple[Any, ...]:
    """`first`: the user's first erasure of the batch, which the deleted events count for."""
    return (erasure.erasure_id, erasure.user_id, pseudonym(erasure.user_id, pseudonym_key),
            datetime.fromtimestamp(erasure.requested_at / 1000.0, tz=UTC), first,
            record.partition, record.offset)


class Archiver:
    """The batch handler; holds one connection and reopens it after a failure."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: asyncpg.Connection | None = None

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        valid: list[tuple[Event | Erasure, ConsumerRecord]] = []
        for record in records:
            decoded = (erasure.decode(record.value) if erasure.is_erasure(record.headers)
                       else decode(record))
            if isinstance(decoded, str):
                PROCESSING_ERRORS.labels(self.settings.group_archiver, "invalid_message").inc()
            else:
                valid.append((decoded, record))
        if valid:
            await self._write(records, valid)

    def _rows(self, valid: list[tuple[Event | Erasure, ConsumerRecord]],
              known: dict[str, tuple[int | None, int | None]]
              ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The batch's event rows and its new erasures' rows. An erasure takes the user's
        events before it in the batch (the rest of them are deleted), and so does its
        redelivery, `known` (applied before) at the same position; a copy of one, in the batch
        or `known` at another position, takes nothing."""
        rows: list[tuple[Any, ...]] = []
        erased: list[tuple[Any, ...]] = []
        key = self.settings.log_pseudonym_key.get_secret_value()
        for decoded, record in valid:
            if not isinstance(decoded, Erasure):
                rows.append(event_row(decoded, record))
                continue
            seen_at = known.get(decoded.erasure_id)
            redelivered = seen_at == (record.partition, record.offset)
            if ((seen_at is not None and not redelivered)
                    or any(row[0] == decoded.erasure_id for row in erased)):
                continue  # a copy
            if not redelivered:
                first = all(row[1] != decoded.user_id for row in erased)
                erased.append(erasure_row(decoded, record, key, first))
            rows = [row for row in rows if row[1] != decoded.user_id]
        return rows, erased

    async def _write(self, records: Sequence[ConsumerRecord],
                     valid: list[tuple[Event | Erasure, ConsumerRecord]]) -> None:
        at = [At(r.partition, r.offset, r.timestamp if r.timestamp is not None else -1)
              for r in records]
        spans = spans_of(at)
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await asyncpg.connect(
                    self.settings.database_url, timeout=5,
                    command_timeout=self.settings.archiver_pg_timeout_s)
            inserted = 0
            async with self.conn.transaction():
                replays = await self._claim_positions(at, spans)
                if replays.applied:
                    done = {(at[j].partition, at[j].offset) for j in replays.applied}
                    valid = [(x, r) for x, r in valid if (r.partition, r.offset) not in done]
                erasure_ids = [x.erasure_id for x, _ in valid if isinstance(x, Erasure)]
                known = ({row[0]: (row[1], row[2])
                          for row in await self.conn.fetch(KNOWN_ERASURES, erasure_ids)}
                         if erasure_ids else {})
                rows, erased = self._rows(valid, known)
                if erased:
                    await self._erase(erased)
                if rows:
                    with timed(POSTGRES_QUERY_SECONDS, "archive_events"):
                        inserted = await self.conn.fetchval(INSERT_EVENTS,
                                                            *zip(*rows, strict=True))
                partitions = sorted(replays.positions)
                await self.conn.execute(
                    MOVE_POSITIONS, self.settings.topic_events, partitions,
                    [replays.positions[p].next_offset for p in partitions],
                    [replays.positions[p].newest_ms for p in partitions])
        except Exception:
            # Reconnect on the retry, whatever failed: asyncpg's InternalClientError (seen
            # when PostgreSQL stopped mid-query) is none of its connection errors, and a
            # connection it left half-broken would fail every retry until a restart.
            await self.close()
            raise
        EVENTS_ARCHIVED.inc(inserted)
        if erased:
            USERS_ERASED.labels(self.settings.group_archiver).inc(len(erased))
            for row in erased:
                log.info("erasure %s of %s: events and user row deleted", row[0], row[2])

    async def _claim_positions(self, at: list[At], spans: dict[int, Span]) -> Replays:
        """Lock the batch's partitions' positions (a copy of this archiver writing the same
        partitions waits here for this transaction) and find the records they cover."""
        topic = self.settings.topic_events
        stored = {row[0]: None if row[1] is None else Position(row[1], row[2])
                  for row in await self.conn.fetch(CLAIM_POSITIONS, topic, sorted(spans))}
        replays = find_rewrites(at, spans, stored, topic)
        if replays.applied:
            log.info("%s: %d of %d records were archived before (below their partition's "
                     "archived offset): skipped", topic, len(replays.applied), len(at))
        return replays

    async def _erase(self, erased: list[tuple[Any, ...]]) -> None:
        users = [row[1] for row in erased]
        # The append-only trigger lets these users' rows go, in this transaction only (sql/008).
        await self.conn.execute("SELECT set_config('reco.erase_users', $1, true)",
                                " ".join(users))
        with timed(POSTGRES_QUERY_SECONDS, "erase_users"):
            await self.conn.execute(ERASE_USERS, *zip(*erased, strict=True))

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()


async def run_async(settings: Settings, stop: asyncio.Event) -> None:
    """Archive until `stop` is set, then finish the batch in hand, commit and close."""
    consumer, commits = loop.make_consumer(settings, settings.group_archiver)
    archiver = Archiver(settings)
    try:
        if not await loop.start_with_retry(consumer, stop, settings.consumer_backoff_max_s):
            return
        await loop.run_batches(consumer, archiver, stop, commits=commits,
                               group=settings.group_archiver,
                               batch_max=settings.consumer_batch_max,
                               backoff_max_s=settings.consumer_backoff_max_s)
    finally:
        await consumer.stop()
        await archiver.close()


def run(settings: Settings) -> None:
    """Entry point of `reco run archiver`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve_metrics(settings.archiver_metrics_port, settings.group_archiver,
                  "RECO_ARCHIVER_METRICS_PORT")

    async def main() -> None:
        stop = asyncio.Event()
        loop.stop_on_signals(stop)
        await run_async(settings, stop)

    asyncio.run(main())
