"""Catalogue rows PostgreSQL stored but Redis did not take, mirrored again in the background.

A catalogue write stores the item (or a delete's tombstone) in PostgreSQL, then mirrors it into
Redis (serving/catalogue.py).
With Redis down or refusing writes, the request answers 503 and a retry is safe, but the row is
stored already: a client that never retries left the item unserved, or a sold-out one on sale,
until its next write. The ingest API keeps such rows here and mirrors them again every
`RETRY_S` until Redis takes them. An older revision never overwrites a newer one (the mirror
scripts compare revisions), so a late retry cannot undo a later write, a delete included. Held
in memory only: rows owed when the process stops are mirrored by the daily `maintenance` DAG
(serving/catalogue_mirror.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aredis
from redis import exceptions as redis_errors

from serving import ingest_metrics
from serving.catalogue import mirror_items

log = logging.getLogger(__name__)
RETRY_S = 2.0


class OwedMirrors:
    """Item id -> its newest stored row not mirrored yet, and the task mirroring them."""

    def __init__(self, client: aredis.Redis, retry_s: float = RETRY_S) -> None:
        self.client = client
        self.retry_s = retry_s
        self.rows: dict[str, asyncpg.Record] = {}
        self._task: asyncio.Task[None] | None = None

    def owe(self, rows: Sequence[asyncpg.Record]) -> None:
        for row in rows:
            held = self.rows.get(row[0])
            if held is None or held[6] < row[6]:  # the newest revision is the one to mirror
                self.rows[row[0]] = row
        ingest_metrics.MIRRORS_OWED.set(len(self.rows))
        log.warning("%d catalogue item(s) stored but not mirrored into Redis: retried every "
                    "%.0f s", len(self.rows), self.retry_s)

    async def retry(self) -> bool:
        """Mirror every owed row once; whether Redis took them."""
        owed = dict(self.rows)
        if not owed:
            return True
        try:
            # The client's own retry may have stored and mirrored a newer revision meanwhile.
            await mirror_items(self.client, list(owed.values()), warn_stale=False)
        except (OSError, redis_errors.RedisError) as exc:
            log.debug("owed mirrors still refused: %r", exc)
            return False
        for item, row in owed.items():
            if self.rows.get(item) is row:  # not owed again at a newer revision meanwhile
                del self.rows[item]
        ingest_metrics.MIRRORS_OWED.set(len(self.rows))
        log.info("%d owed catalogue item(s) mirrored into Redis", len(owed))
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                await self.retry()
            except Exception:  # noqa: BLE001 - a surprise must not end the retries for good
                log.exception("retrying owed catalogue mirrors failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.rows:
            log.warning("stopping with %d catalogue item(s) not mirrored into Redis: the "
                        "maintenance DAG's mirror (or `reco db mirror-items`) copies them",
                        len(self.rows))
