"""Catalogue writes: PostgreSQL `items` (source of truth) and the Redis item metadata.

The recommendation API reads `item:meta:{item_id}` (category, price, in_stock "1"/"0",
created_at epoch seconds, title) for business rules and the new-arrivals filler (newest
`created_at` first). PostgreSQL is written first; Redis mirrors what PostgreSQL holds
afterwards, each hash only from a newer revision than its own (two replicas' writes can land
out of order).

Each hash write also lists its item in `item:ids` (the ids the API's full reload reads). Each
upsert then stamps its items in `item:changes` (item -> epoch ms by Redis's clock) and INCRs
`item:catalog_version`, in the same pipeline after the hashes: the recommendation API then
re-reads just those items at its next snapshot refresh (`popular_snapshot_refresh_s`, 5 s), so
an item set out of stock stops being recommended within one refresh, cached responses included
(re-checked when hit under a newer catalogue version: serving/reco_service.py).

A delete keeps the PostgreSQL row as a tombstone (`deleted_at`, sql/007) at a new revision, and
replaces the hash by a tombstone of that revision (`MIRROR_DELETE`), unlisted from `item:ids`
and announced like an upsert: an older upsert landing later is kept out as any older revision
is, and a later PUT, newer, takes the item back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
import redis.asyncio as aredis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from reco import keys
from reco.events import (
    Identifier,
    epoch_ms,
    future_skew_s,
    small_object_problem,
    within_range,
)
from reco.timing import POSTGRES_QUERY_SECONDS, timed

log = logging.getLogger(__name__)
MAX_ATTRIBUTE_KEYS = 256
MAX_ATTRIBUTES_BYTES = 65_536  # as JSON
Category = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ItemIn(BaseModel):
    """Catalogue fields of one item; `created_at` (as an event's timestamp: RFC 3339 with an
    offset or epoch ms, from 1973 on, at most RECO_MAX_FUTURE_SKEW_S ahead) defaults to the first
    upsert."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(max_length=512)] | None = None
    category: Category | None = None
    # numeric(12, 2): anything above this rounds to 10**10 in PostgreSQL and overflows.
    price: Annotated[float, Field(ge=0, le=9_999_999_999.99, allow_inf_nan=False)] | None = None
    in_stock: bool = True
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_validator("title", "category")
    @classmethod
    def _no_nul_text(cls, value: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL (found by tests/security/test_fuzz.py: it was a 500).
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("attributes")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Nested at most as deep as an event's context: a deeper object reached the JSON
        # parser's recursion limit (~200 levels) unnamed. Roomier than a context in keys and
        # bytes (specifications, descriptions), and only PostgreSQL holds them. jsonb cannot
        # hold NUL and orjson refuses integers beyond 64 bits (both were 500s).
        problem = attributes_problem(value) or _unstorable(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _client_time(cls, value: Any, info: ValidationInfo) -> datetime | None:
        # The events' rule: epoch seconds were taken for January 1970, times without an offset
        # for UTC, and a date years ahead led the new arrivals until it came.
        if value is None:
            return None
        return datetime.fromtimestamp(within_range(epoch_ms(value), future_skew_s(info)) / 1000.0,
                                      tz=UTC)


def _unstorable(value: Any) -> str | None:
    """Why a JSON value cannot be stored as jsonb by `store_items`, or None."""
    if isinstance(value, str):
        return "must not contain NUL characters" if "\x00" in value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**64 else "integers must fit in 64 bits"
    if isinstance(value, float):  # JSON has none: they would become null
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, dict):
        return next((p for k, v in value.items()
                     if (p := _unstorable(k) or _unstorable(v))), None)
    if isinstance(value, list):
        return next((p for v in value if (p := _unstorable(v))), None)
    return None


def _without_defaults(schema: dict[str, Any]) -> None:
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


def attributes_problem(value: dict[str, Any]) -> str | None:
    """Why an item's attributes are over the limits (keys, bytes, nesting), or None."""
    return small_object_problem(value, MAX_ATTRIBUTES_BYTES, max_keys=MAX_ATTRIBUTE_KEYS)


class AttributesRefused(ValueError):
    """A PATCH's attributes, merged into the stored ones, would be over the limits."""


class ItemPatch(ItemIn):
    """PATCH /items/{item_id}: only the fields given change, as in a JSON merge patch (RFC
    7396) one level deep: null clears title, category or price, and removes an attribute;
    `attributes` merges key by key; `created_at` null keeps it."""

    # A field left out is unchanged, so the schema shows no defaults: a client generated from
    # it and sending PUT's (in_stock true) would put a sold-out item back on sale.
    model_config = ConfigDict(extra="forbid", json_schema_extra=_without_defaults)

    def changes(self) -> tuple[Any, ...]:
        """`PATCH_ITEM`'s arguments after the item id."""
        given = self.model_fields_set
        kept = {k: v for k, v in self.attributes.items() if v is not None}
        return ("title" in given, self.title, "category" in given, self.category,
                "price" in given, self.price, self.in_stock if "in_stock" in given else None,
                orjson.dumps(kept).decode(), [k for k, v in self.attributes.items() if v is None],
                self.created_at)


class ItemWithId(ItemIn):
    item_id: Identifier


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[ItemWithId], Field(min_length=1, max_length=1000)]


# created_at: set on first insert (now() unless given), kept on update unless given again; a
# deleted item put again is a new arrival (now() unless given). The last column of the rows
# these statements return says whether the row is a deleted item's (see `mirror_items`).
UPSERT_ITEMS = """
WITH src AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::bool[],
                         $6::jsonb[], $7::timestamptz[])
        AS s(item_id, title, category, price, in_stock, attributes, created_at)
)
INSERT INTO items AS i (item_id, title, category, price, in_stock, attributes, created_at)
SELECT item_id, title, category, price, in_stock, attributes, COALESCE(created_at, now())
FROM src
ON CONFLICT (item_id) DO UPDATE SET
    title = EXCLUDED.title, category = EXCLUDED.category, price = EXCLUDED.price,
    in_stock = EXCLUDED.in_stock, attributes = EXCLUDED.attributes, updated_at = now(),
    created_at = COALESCE((SELECT s.created_at FROM src s WHERE s.item_id = i.item_id),
                          CASE WHEN i.deleted_at IS NULL THEN i.created_at ELSE now() END),
    deleted_at = NULL,
    revision = nextval('item_revision_seq')  -- taken under the row lock: in commit order
RETURNING item_id, title, category, price, in_stock, extract(epoch FROM created_at), revision,
          false
"""
# The row as UPSERT_ITEMS returns it; no row when the item does not exist or was deleted (a
# patch creates nothing: without its other fields it would go on sale with none).
PATCH_ITEM = """
UPDATE items SET
    title = CASE WHEN $2 THEN $3 ELSE title END,
    category = CASE WHEN $4 THEN $5 ELSE category END,
    price = CASE WHEN $6 THEN $7::numeric ELSE price END,
    in_stock = COALESCE($8, in_stock),
    attributes = (attributes || $9::jsonb) - $10::text[],
    created_at = COALESCE($11, created_at),
    updated_at = now(),
    revision = nextval('item_revision_seq')
WHERE item_id = $1 AND deleted_at IS NULL
RETURNING item_id, title, category, price, in_stock, extract(epoch FROM created_at), revision,
          false
"""
# What PATCH_ITEM's merge would leave, the row locked until the update: each patch is held to
# the limits, but repeated ones grew attributes past them.
MERGED_ATTRIBUTES = """
SELECT (attributes || $2::jsonb) - $3::text[] FROM items
WHERE item_id = $1 AND deleted_at IS NULL FOR UPDATE
"""
# (item id, revision, deleted by this statement) of a deleted item: one deleted now takes the
# next revision under the row lock, as upserts do. One deleted before answers its tombstone too
# (false), so that a client retrying after a 503 has it mirrored again; no row: no such item.
DELETE_ITEM = """
WITH deleted AS (
    UPDATE items SET deleted_at = now(), updated_at = now(),
                     revision = nextval('item_revision_seq')
    WHERE item_id = $1 AND deleted_at IS NULL
    RETURNING item_id, revision
)
SELECT item_id, revision, true FROM deleted
UNION ALL
SELECT item_id, revision, false FROM items WHERE item_id = $1 AND deleted_at IS NOT NULL
"""
# KEYS[1] = item:meta:{id}, KEYS[2] = item:ids; ARGV = item id, revision, n, n field/value
# pairs, fields to delete. Writes only a revision newer than the hash's: a slower replica's
# older upsert lands as a no-op (0), a deleted item's tombstone (`MIRROR_DELETE`) included. The
# same revision again (a mirror retried: serving/owed_mirrors.py) answers -1. Lists the item
# unless its hash is a tombstone (in the same script as its hash: a crash or failover never
# keeps one without the other). A newer upsert replaces a tombstone whole: its expiry goes too.
MIRROR_ITEM = """
local revision = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '-1')
local deleted = redis.call('HEXISTS', KEYS[1], 'deleted') == 1
if current >= revision then
    if not deleted then redis.call('SADD', KEYS[2], ARGV[1]) end
    if current == revision then return -1 end
    return 0
end
redis.call('SADD', KEYS[2], ARGV[1])  -- first: out of memory, nothing is written
if deleted then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[3])
local set = {'revision', ARGV[2]}
for i = 4, 3 + 2 * n do set[#set + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(set))
if #ARGV > 3 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n)) end
return 1
"""
# KEYS as MIRROR_ITEM's; ARGV = item id, revision, seconds the tombstone lives. Over an older
# revision, replaces the hash by a tombstone holding only this revision (which keeps older
# upserts out, as any newer revision does) and unlists the item; answers as MIRROR_ITEM. HSET
# goes first: Redis out of memory refuses it (SREM, DEL, HDEL pass), and a script refused
# half-way keeps what it did before (nothing then: no hash removed without its tombstone).
MIRROR_DELETE = """
local revision = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '-1')
if current > revision then return 0 end
if current == revision then
    redis.call('SREM', KEYS[2], ARGV[1])
    return -1
end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'deleted', '1')
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if field ~= 'revision' and field ~= 'deleted' then redis.call('HDEL', KEYS[1], field) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


def tombstone(item_id: str, revision: int) -> tuple[Any, ...]:
    """A deleted item's row to mirror, in the shape of `UPSERT_ITEMS`'s."""
    return (item_id, None, None, None, None, None, revision, True)


async def store_items(pool: asyncpg.Pool, items: Sequence[ItemWithId]) -> list[asyncpg.Record]:
    """Upsert into PostgreSQL; returns the stored rows (`UPSERT_ITEMS`'s) to mirror."""
    columns = (
        [it.item_id for it in items], [it.title for it in items], [it.category for it in items],
        [it.price for it in items], [it.in_stock for it in items],
        [orjson.dumps(it.attributes).decode() for it in items], [it.created_at for it in items],
    )
    with timed(POSTGRES_QUERY_SECONDS, "upsert_items"):
        return await pool.fetch(UPSERT_ITEMS, *columns)


async def store_patch(pool: asyncpg.Pool, item_id: str,
                      patch: ItemPatch) -> asyncpg.Record | None:
    """Change the given fields of a stored item; returns its row to mirror, None if there is
    none. AttributesRefused when the merged attributes would be over the limits."""
    changes = patch.changes()
    with timed(POSTGRES_QUERY_SECONDS, "patch_item"):
        async with pool.acquire() as conn, conn.transaction():
            if patch.attributes:
                merged = await conn.fetchval(MERGED_ATTRIBUTES, item_id, *changes[7:9])
                problem = merged is not None and attributes_problem(orjson.loads(merged))
                if problem:
                    raise AttributesRefused(f"merged into the stored ones, they {problem}")
            return await conn.fetchrow(PATCH_ITEM, item_id, *changes)


async def store_delete(pool: asyncpg.Pool,
                       item_id: str) -> tuple[tuple[Any, ...], bool] | None:
    """Delete a stored item (its row stays as a tombstone); returns its `tombstone` row to
    mirror and whether this call deleted it (False: deleted before), None if there is none."""
    with timed(POSTGRES_QUERY_SECONDS, "delete_item"):
        found = await pool.fetchrow(DELETE_ITEM, item_id)
    return None if found is None else (tombstone(found[0], found[1]), found[2])


def _hash_fields(row: Sequence[Any]) -> list[Any]:
    """`MIRROR_ITEM`'s arguments after the revision for an `UPSERT_ITEMS` row."""
    _, title, category, price, in_stock, created_at = row[:6]
    fields = {"title": title, "category": category,
              "price": None if price is None else str(price),
              "in_stock": "1" if in_stock else "0", "created_at": repr(float(created_at))}
    present = [x for k, v in fields.items() if v is not None for x in (k, v)]
    absent = [k for k, v in fields.items() if v is None]
    return [len(present) // 2, *present, *absent]


async def mirror_items(client: aredis.Redis, rows: Sequence[Sequence[Any]],
                       warn_stale: bool = True) -> None:
    """Write stored rows (`UPSERT_ITEMS`'s, or a deleted item's `tombstone`) to their Redis
    hashes, each only if its revision is newer than the one there, then announce them.
    `warn_stale`: log the rows a newer revision kept out (not for a retry, which a client's own
    retried write may have overtaken)."""
    mirror = client.register_script(MIRROR_ITEM)
    delete = client.register_script(MIRROR_DELETE)
    pipe = client.pipeline(transaction=False)
    for row in rows:
        item_keys = [keys.item_meta(row[0]), keys.ITEM_IDS]
        if row[7]:
            await delete(keys=item_keys, args=[row[0], row[6], keys.ITEM_TOMBSTONE_TTL_S],
                         client=pipe)
        else:
            await mirror(keys=item_keys, args=[row[0], row[6], *_hash_fields(row)], client=pipe)
    announce_changes(pipe, [row[0] for row in rows])
    replies = await pipe.execute()
    stale = [row[0] for row, applied in zip(rows, replies[:len(rows)], strict=True)
             if applied == 0]
    if stale and warn_stale:  # a newer write won (a race); if it never ends, see the warning
        log.warning("%d item(s) not mirrored, Redis holds a newer revision: %s. If PostgreSQL "
                    "was restored from an older backup than Redis, move item_revision_seq "
                    "past Redis' revisions (setval).", len(stale), stale[:10])


# Change entries are stamped with Redis's clock, not the ingest host's: a replica whose clock ran
# ahead stamped entries that hid other replicas' later changes from the readers' window
# (serving/catalogue_sync.py), and their stock changes waited for the next full reload.
ANNOUNCE_CHANGES = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - ARGV[1]))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
return redis.call('INCR', KEYS[2])
"""


def announce_changes(pipe: aredis.client.Pipeline, item_ids: Sequence[str]) -> None:
    """Queue the change entries, their trim and the version INCR after the hash writes: one
    pipeline runs in order, so a server that sees the new version sees the hashes too."""
    if not item_ids:
        return
    pipe.eval(ANNOUNCE_CHANGES, 2, keys.ITEM_META_CHANGES, keys.ITEM_META_VERSION,
              keys.ITEM_META_CHANGES_KEEP_MS, keys.ITEM_META_CHANGES_MAX, *item_ids)
