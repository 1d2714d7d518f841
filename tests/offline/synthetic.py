"""Structured synthetic events for offline tests and the training benchmark.

Users belong to taste groups; each group's items form a ring, and a session walks a few steps
along it (with occasional clicks, carts and purchases, and some off-group noise). A model that
learns the structure puts a user's next item in its top 10; popularity cannot.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np


@dataclass(frozen=True)
class Shape:
    users: int = 300
    groups: int = 8
    items_per_group: int = 25
    sessions_per_user: int = 3
    session_length: tuple[int, int] = (4, 7)
    noise: float = 0.05
    days: int = 20
    seed: int = 7


def item_id(group: int, position: int) -> str:
    return f"g{group}-i{position}"


def generate(shape: Shape, end: datetime) -> list[tuple]:
    """Rows (event_id, user_id, item_id, event_type, event_time, session_id) per user in time."""
    rng = np.random.default_rng(shape.seed)
    g, n = shape.groups, shape.items_per_group
    start = end - timedelta(days=shape.days)
    rows: list[tuple] = []
    for u in range(shape.users):
        group = u % g
        times = np.sort(rng.uniform(0, shape.days * 86400 - 7200, shape.sessions_per_user))
        position = int(rng.integers(n))
        for s, t0 in enumerate(times):
            t = start + timedelta(seconds=float(t0))
            session = f"u{u}-s{s}"
            for _ in range(int(rng.integers(*shape.session_length))):
                if rng.random() < shape.noise:
                    item = item_id(int(rng.integers(g)), int(rng.integers(n)))
                else:
                    item = item_id(group, position)
                    position = (position + 1) % n
                kind = rng.choice(["view", "click", "cart", "purchase"], p=[0.7, 0.2, 0.07, 0.03])
                rows.append((str(uuid.uuid4()), f"u{u}", item, str(kind), t, session))
                t += timedelta(seconds=float(rng.uniform(20, 180)))
            position = (position + int(rng.integers(1, 3))) % n
    return rows


def insert(conn, rows: list[tuple]) -> int:
    """COPY rows into PostgreSQL `events`."""
    buf = io.StringIO()
    for event_id, user, item, kind, when, session in rows:
        buf.write(f"{event_id}\t{user}\t{item}\t{kind}\t{when.isoformat()}\t{session}\n")
    buf.seek(0)
    with conn.cursor() as cur, cur.copy(
        "COPY events (event_id, user_id, item_id, event_type, event_time, session_id)"
        " FROM STDIN") as copy:
        while chunk := buf.read(1 << 20):
            copy.write(chunk)
    return len(rows)


def window_end() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
