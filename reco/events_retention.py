"""Retention of PostgreSQL `events`: delete the events older than RECO_EVENTS_RETENTION_DAYS.

The log only grows otherwise (~275 bytes an event with its indexes: 5M events a day is ~40 GB a
month). Deletes go in batches, each its own short transaction, oldest first, so the archiver's
inserts are never held up for long and a stopped run keeps what it did. The append-only trigger
lets a transaction delete only rows older than the cutoff it declares (sql/005): a mistaken
DELETE elsewhere is still refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from reco import db
from reco.settings import Settings

log = logging.getLogger(__name__)
BATCH_ROWS = 10_000

_DELETE_BATCH = """
DELETE FROM events WHERE event_id IN (
    SELECT event_id FROM events WHERE event_time < %(cutoff)s
    ORDER BY event_time LIMIT %(rows)s)
"""


@dataclass(frozen=True)
class Pruned:
    cutoff: datetime | None  # None: retention is off (RECO_EVENTS_RETENTION_DAYS=0)
    deleted: int = 0


def prune_events(settings: Settings, now: datetime | None = None,
                 batch_rows: int = BATCH_ROWS) -> Pruned:
    """Delete the events older than `settings.events_retention_days` before `now`."""
    if not settings.events_retention_days:
        return Pruned(None)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.events_retention_days)
    deleted = 0
    with db.connect(settings) as conn:
        while True:
            with conn.transaction():
                conn.execute("SELECT set_config('reco.retention_cutoff', %s, true)",
                             (cutoff.isoformat(),))
                batch = conn.execute(_DELETE_BATCH, {"cutoff": cutoff, "rows": batch_rows})
            deleted += batch.rowcount
            if batch.rowcount < batch_rows:
                break
    log.info("deleted %d events older than %s", deleted, cutoff.isoformat())
    return Pruned(cutoff, deleted)
