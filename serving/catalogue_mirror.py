"""Copy the PostgreSQL catalogue (the source of truth) into Redis's item metadata again.

Upserts mirror each item as they store it (serving/catalogue.py). This walks every stored item,
for when Redis lost its data (a new server, a restore from an older file), an ingest API stopped
with writes Redis had refused (serving/owed_mirrors.py; the daily `maintenance` DAG runs it), or
Redis holds hashes of releases before `keys.ITEM_IDS`. Items whose hash holds their stored
revision already are only added to `keys.ITEM_IDS`; the others are mirrored as an upsert mirrors
them (a newer revision in Redis wins), so the API re-reads just those. Once every stored item is
listed, `keys.ITEM_IDS_COMPLETE` joins the set: the API's full reloads then read the set instead
of scanning the keyspace. Items PostgreSQL holds deleted (sql/007) are removed from Redis: a
hash older than the delete becomes its tombstone (announced, as a delete's), and the id leaves
`keys.ITEM_IDS`. Safe to run at any time, beside live upserts and deletes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aredis
from redis import exceptions as redis_errors

from reco import keys
from reco.settings import Settings
from serving.catalogue import mirror_items

log = logging.getLogger(__name__)
PAGE_ROWS = 1000
# Every stored item in item_id order from after $1, as UPSERT_ITEMS returns it (deleted ones,
# their last column true, too).
STORED_ITEMS = """
SELECT item_id, title, category, price, in_stock, extract(epoch FROM created_at), revision,
       deleted_at IS NOT NULL
FROM items WHERE item_id > $1 ORDER BY item_id LIMIT $2
"""
# KEYS as serving/catalogue.py's MIRROR_ITEM's; ARGV = item id. For an item whose hash holds
# its stored revision (or a newer one) already: listed if the hash is an item's, unlisted if it
# is a tombstone or gone (a delete landed since it was read).
LIST_CURRENT = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'deleted') == 0 then
    return redis.call('SADD', KEYS[2], ARGV[1])
end
return redis.call('SREM', KEYS[2], ARGV[1])
"""


@dataclass(frozen=True)
class Mirrored:
    items: int  # stored items read (not deleted)
    written: int  # of them and the deleted, sent to be mirrored: Redis lacked them (or held
    # the deleted ones) at an older revision
    deleted: int = 0  # deleted items read


def _behind(row: Sequence[Any], held: bytes | None) -> bool:
    """Whether Redis's hash (its revision `held`) needs the stored `row`: an item's is missing or
    older; a deleted item's is older (no hash: nothing to remove)."""
    if row[7]:
        return held is not None and int(held) < row[6]
    return held is None or int(held) < row[6]


async def _list_current(client: aredis.Redis, rows: Sequence[Sequence[Any]]) -> None:
    """`keys.ITEM_IDS` brought in line with the hashes of rows Redis holds at their stored
    revision already (`LIST_CURRENT`: a deleted item's id leaves it)."""
    if not rows:
        return
    listing = client.register_script(LIST_CURRENT)
    pipe = client.pipeline(transaction=False)
    for row in rows:
        await listing(keys=[keys.item_meta(row[0]), keys.ITEM_IDS], args=[row[0]], client=pipe)
    await pipe.execute()


# Marks the set complete only if this pass's token is still in it: a set lost (deleted,
# evicted) during the pass would miss the items of the pages listed before.
MARK_COMPLETE = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
return redis.call('SADD', KEYS[1], ARGV[2]) + 1
"""


async def mirror_catalogue(pool: asyncpg.Pool, client: aredis.Redis,
                           page_rows: int = PAGE_ROWS) -> Mirrored:
    """Every stored item mirrored into Redis, a page of `page_rows` at a time, then the id set
    marked complete (unless it was lost during the pass: the next pass marks it)."""
    token = keys.ITEM_IDS_MIRROR_TOKEN.format(uuid.uuid4())
    await client.sadd(keys.ITEM_IDS, token)
    after, items, written, deleted = "", 0, 0, 0
    while rows := await pool.fetch(STORED_ITEMS, after, page_rows):
        pipe = client.pipeline(transaction=False)
        for row in rows:
            pipe.hget(keys.item_meta(row[0]), "revision")
        held = await pipe.execute(raise_on_error=False)
        # Another type at an item's key (a previous release's counter at `item:meta:version`)
        # leaves that item out, not the pages after it.
        blocked = [row[0] for row, revision in zip(rows, held, strict=True)
                   if isinstance(revision, redis_errors.ResponseError)]
        if blocked:
            log.warning("not mirrored, their key holds another type: %s", blocked)
        checked = [(row, revision) for row, revision in zip(rows, held, strict=True)
                   if row[0] not in blocked]
        behind = [row for row, revision in checked if _behind(row, revision)]
        await _list_current(client, [row for row, revision in checked
                                     if not _behind(row, revision)])
        await mirror_items(client, behind)
        gone = sum(1 for row in rows if row[7])
        items, deleted = items + len(rows) - gone, deleted + gone
        written, after = written + len(behind), rows[-1][0]
    if not await client.eval(MARK_COMPLETE, 1, keys.ITEM_IDS, token, keys.ITEM_IDS_COMPLETE):
        log.warning("%s was lost during the mirror: not marked complete, so full reloads keep "
                    "scanning the keyspace until the next mirror", keys.ITEM_IDS)
    return Mirrored(items, written, deleted)


def mirror_catalogue_of(settings: Settings) -> Mirrored:
    """`mirror_catalogue` on the PostgreSQL and Redis of `settings` (`reco db mirror-items`, the
    `maintenance` DAG)."""

    async def run() -> Mirrored:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
        client = aredis.Redis.from_url(settings.redis_url)
        try:
            return await mirror_catalogue(pool, client)
        finally:
            await pool.close()
            await client.aclose()

    return asyncio.run(run())
