"""What the archiver's transaction costs PostgreSQL per event, next to inserting the events alone.

    .venv/bin/python benchmarks/archiver_bench.py [--turns 12] [--batches 10] [--batch 2000]

The archiver inserts each batch in one statement that also records every new user's earliest
event in `users` (`streaming.archiver.INSERT_EVENTS`), in a transaction that first locks the
batch's partitions' archived positions and then moves them on (`CLAIM_POSITIONS`,
`MOVE_POSITIONS`). The baseline is the same insert into `events` without the users, as the
archiver ran first; the middle side is the statement without the positions, as it ran before
sql/009. All run on one fresh PostgreSQL (the tests' server setup), taking turns so that the
machine's noise and the tables' growth fall on each alike; each turn sends `--batches` batches
of `--batch` events from Zipf-drawn users of 100,000. Writes benchmarks/reports/archiver.md
and prints its table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import asyncpg
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reco import db  # noqa: E402
from reco.settings import Settings  # noqa: E402
from streaming.archiver import CLAIM_POSITIONS, INSERT_EVENTS, MOVE_POSITIONS  # noqa: E402
from tests.servers import remove, start_postgres  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "archiver.md"
USERS = 100_000
EVENTS_ONLY = """
INSERT INTO events (event_id, user_id, item_id, event_type, event_time, session_id, context,
                    kafka_partition, kafka_offset)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::jsonb[], $8::int[], $9::bigint[])
ON CONFLICT (event_id) DO NOTHING
"""


async def one_statement(statement: str, conn: asyncpg.Connection, columns: list[list]) -> None:
    async with conn.transaction():
        await conn.execute(statement, *columns)


async def with_positions(conn: asyncpg.Connection, columns: list[list]) -> None:
    """The archiver's transaction: the batch is one partition's, `columns[8]` its offsets."""
    async with conn.transaction():
        await conn.fetch(CLAIM_POSITIONS, "events", [0])
        await conn.execute(INSERT_EVENTS, *columns)
        await conn.execute(MOVE_POSITIONS, "events", [0], [columns[8][-1] + 1], [0])


Side = Callable[[asyncpg.Connection, list[list]], Awaitable[None]]
SIDES: dict[str, Side] = {  # each in a transaction, as the archiver writes
    "events only": partial(one_statement, EVENTS_ONLY),
    "events and users": partial(one_statement, INSERT_EVENTS),
    "positions, events and users (archiver)": with_positions,
}


def batch_columns(rng: np.random.Generator, size: int, start: datetime) -> list[list]:
    users = np.minimum(rng.zipf(1.2, size), USERS)
    times = [start + timedelta(milliseconds=int(ms)) for ms in np.sort(rng.integers(0, 60_000,
                                                                                    size))]
    return [[uuid.uuid4() for _ in range(size)], [f"u{u}" for u in users],
            [f"i{i}" for i in rng.integers(0, 100_000, size)], ["view"] * size, times,
            [None] * size, [None] * size, [0] * size, list(range(size))]


async def measure(url: str, turns: int, batches: int, size: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    conn = await asyncpg.connect(url)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for turn in range(turns + 1):  # turn 0 warms every side up and is not counted
            sides = list(SIDES.items())
            for side, write in sides[turn % 3:] + sides[:turn % 3]:  # each goes first in turn
                work = [batch_columns(rng, size, start + timedelta(minutes=turn * batches + b))
                        for b in range(batches)]
                began = time.perf_counter()
                for columns in work:
                    await write(conn, columns)
                if turn:
                    seconds[side].append(time.perf_counter() - began)
    finally:
        await conn.close()
    return seconds


def report(seconds: dict[str, list[float]], turns: int, batches: int, size: int) -> str:
    events = batches * size
    base = np.median(seconds[next(iter(SIDES))])
    rows = [f"| {side} | {events / np.median(s):,.0f} | {np.median(s) / events * 1e6:.1f} | "
            f"{np.median(s) / base:.2f} |" for side, s in seconds.items()]
    header = "| writes | events/s (median turn) | us per event | time, of events only |"
    table = "\n".join([header, "|---|---:|---:|---:|", *rows])
    REPORT.write_text(
        f"# The archiver's transaction\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `benchmarks/archiver_bench.py`, "
        f"{turns} turns of {batches} batches of {size:,} events per side, one connection.\n\n"
        f"{table}\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000, help="events per batch "
                        "(RECO_CONSUMER_BATCH_MAX's default)")
    args = parser.parse_args()
    server = start_postgres()
    try:
        from reco.stack.servers import ensure_databases

        settings = Settings(pg_port=server.port)
        ensure_databases(server.port, settings.pg_user, settings.pg_password.get_secret_value(),
                         [settings.pg_database])
        db.migrate(settings)
        seconds = asyncio.run(measure(settings.database_url, args.turns, args.batches,
                                      args.batch))
    finally:
        remove(server)
    print(report(seconds, args.turns, args.batches, args.batch))


if __name__ == "__main__":
    main()
