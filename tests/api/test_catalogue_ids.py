"""The catalogue's id set (`item:ids`): what the full reload reads instead of a SCAN of the
keyspace once the full mirror marked it complete, and `reco db mirror-items`, which copies the
PostgreSQL catalogue into Redis again and marks it (real Redis and PostgreSQL)."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import redis
import redis.asyncio as aredis
from typer.testing import CliRunner

from reco import keys
from reco.cli import app
from reco.settings import Settings, get_settings
from serving import catalogue_mirror
from serving.catalogue import ItemWithId
from serving.catalogue_mirror import Mirrored, mirror_catalogue
from serving.catalogue_sync import CatalogueSync
from tests.api.test_catalog_updates import upsert


def loaded(settings: Settings) -> dict[str, str]:
    """item -> category of a full reload."""
    sync = CatalogueSync(settings)
    try:
        catalog = sync.load_catalog("v")
    finally:
        sync.close()
    return {item: catalog.categories[catalog.category[catalog.row[item]]] for item in catalog.ids}


def contents(r: redis.Redis) -> dict[str, object]:
    """Every key's value (DUMP's bytes follow a set's internal order, which reads can move)."""
    read = {"set": r.smembers, "hash": r.hgetall, "string": r.get,
            "zset": lambda key: r.zrange(key, 0, -1, withscores=True)}
    return {key: read[r.type(key)](key) for key in r.keys("*")}


def mirror(settings: Settings, page_rows: int = 2) -> Mirrored:
    async def run() -> Mirrored:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
        client = aredis.Redis.from_url(settings.redis_url)
        try:
            return await mirror_catalogue(pool, client, page_rows=page_rows)
        finally:
            await pool.close()
            await client.aclose()

    return asyncio.run(run())


def test_upserts_list_their_items_and_the_reload_reads_only_a_complete_list(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection) -> None:
    upsert(settings, ItemWithId(item_id="a", category="c1"), ItemWithId(item_id="b", category="c2"))
    assert redis_client.smembers(keys.ITEM_IDS) == {"a", "b"}
    redis_client.sadd(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE)  # what the full mirror adds
    # A hash no writer listed is not found, and a listed id without a hash is no item.
    redis_client.hset(keys.item_meta("unlisted"), "category", "c3")
    redis_client.sadd(keys.ITEM_IDS, "gone")
    assert loaded(settings) == {"a": "c1", "b": "c2"}


def test_until_the_list_is_known_complete_the_reload_scans_and_writes_nothing(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection) -> None:
    """Hashes of a release before the list, an old ingest replica still writing them during a
    rolling upgrade, or the list lost (evicted, deleted) with its marker: every full reload
    finds them by a SCAN, as before, until the full mirror lists everything."""
    upsert(settings, *[ItemWithId(item_id=f"old{n}", category="c1") for n in range(5)])
    redis_client.srem(keys.ITEM_IDS, "old0", "old1")  # written by a release before the list
    redis_client.set(keys.ITEM_META_VERSION_LEGACY, "41")  # a string there: skipped by type
    before = contents(redis_client)
    assert loaded(settings) == {f"old{n}": "c1" for n in range(5)}
    assert contents(redis_client) == before  # read-only (Redis may refuse writes)
    assert mirror(settings) == Mirrored(items=5, written=0)  # the hashes are up to date
    assert redis_client.smembers(keys.ITEM_IDS) == {f"old{n}" for n in range(5)} | {
        keys.ITEM_IDS_COMPLETE}
    redis_client.hset(keys.item_meta("stray"), "category", "c3")  # a writer that lists nothing
    assert loaded(settings) == {f"old{n}": "c1" for n in range(5)}
    redis_client.delete(keys.ITEM_IDS)  # lost, marker and all: scanning again
    assert loaded(settings) == {**{f"old{n}": "c1" for n in range(5)}, "stray": "c3"}


def test_a_complete_list_still_finds_what_an_earlier_release_upserts(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection) -> None:
    """An earlier release's ingest replica, still running after the mirror marked the list,
    writes hashes it does not list but announces them in `item:changes`, which a reload reads
    too (kept a day: the mirror runs daily)."""
    upsert(settings, ItemWithId(item_id="a", category="c1"))
    mirror(settings)
    redis_client.hset(keys.item_meta("old-replica"), "category", "c2")
    redis_client.zadd(keys.ITEM_META_CHANGES, {"old-replica": 1.7e12})
    assert loaded(settings) == {"a": "c1", "old-replica": "c2"}


def test_a_list_lost_during_the_mirror_is_not_marked_complete(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection,
        monkeypatch) -> None:
    """Deleted (or evicted) after the first page was listed: the pages after it went into a new
    set, which the marker then declared complete, and the first page's items were left out of
    every full reload."""
    upsert(settings, *[ItemWithId(item_id=f"i{n}", category="c1") for n in range(6)])
    redis_client.delete(keys.ITEM_IDS)
    original = catalogue_mirror.mirror_items
    pages = []

    async def losing_the_set_after_the_first_page(client, rows, **kw):
        await original(client, rows, **kw)
        pages.append(rows)
        if len(pages) == 1:
            redis_client.delete(keys.ITEM_IDS)

    monkeypatch.setattr(catalogue_mirror, "mirror_items", losing_the_set_after_the_first_page)
    mirror(settings)
    assert len(pages) == 3 and not redis_client.sismember(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE)
    assert loaded(settings) == {f"i{n}": "c1" for n in range(6)}  # by a SCAN
    monkeypatch.undo()
    mirror(settings)  # the next pass marks it
    assert redis_client.smembers(keys.ITEM_IDS) == {f"i{n}" for n in range(6)} | {
        keys.ITEM_IDS_COMPLETE}


def test_a_list_lost_while_a_reload_reads_it_is_read_again_by_a_scan(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection,
        monkeypatch) -> None:
    """Evicted after the reload saw the marker, and started again by an upsert: the reload read
    a set of one item as the catalogue."""
    upsert(settings, *[ItemWithId(item_id=f"i{n}", category="c1") for n in range(6)])
    mirror(settings)
    original = CatalogueSync._listed_ids

    def losing_the_set(self):
        redis_client.delete(keys.ITEM_IDS)
        upsert(settings, ItemWithId(item_id="i0", category="c1"))
        yield from original(self)

    monkeypatch.setattr(CatalogueSync, "_listed_ids", losing_the_set)
    assert loaded(settings) == {f"i{n}": "c1" for n in range(6)}


def test_a_listed_id_whose_key_holds_another_type_is_no_item(
        redis_client: redis.Redis, settings: Settings, caplog) -> None:
    """An item named "version" listed while a previous release's counter is still a string at
    its key (`keys.ITEM_META_VERSION_LEGACY`): the reload goes on without it."""
    redis_client.sadd(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE, "version", "a")
    redis_client.hset(keys.item_meta("a"), "category", "c1")
    redis_client.set(keys.ITEM_META_VERSION_LEGACY, "41")
    with caplog.at_level("WARNING", logger="serving.catalogue_sync"):
        assert loaded(settings) == {"a": "c1"}
    assert "item 'version': item:meta:version is no metadata hash" in caplog.text


def test_mirror_items_rebuilds_the_redis_catalogue_from_postgres(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection) -> None:
    items = [ItemWithId(item_id=f"i{n}", category=f"c{n % 2}", price=n, in_stock=n != 3)
             for n in range(5)]
    upsert(settings, *items)
    hashes = {i.item_id: redis_client.hgetall(keys.item_meta(i.item_id)) for i in items}
    redis_client.flushdb()  # Redis lost its data
    assert mirror(settings) == Mirrored(items=5, written=5)
    assert {i: redis_client.hgetall(keys.item_meta(i)) for i in hashes} == hashes
    assert redis_client.smembers(keys.ITEM_IDS) == set(hashes) | {keys.ITEM_IDS_COMPLETE}
    assert redis_client.get(keys.ITEM_META_VERSION) == "3"  # pages of 2: the API re-reads them
    assert loaded(settings) == {f"i{n}": f"c{n % 2}" for n in range(5)}

    # Again: nothing is behind, nothing is written or announced.
    assert mirror(settings) == Mirrored(items=5, written=0)
    assert redis_client.get(keys.ITEM_META_VERSION) == "3"
    # A hash at an older revision is brought up to date; a listed-only loss is listed again.
    redis_client.hset(keys.item_meta("i1"), mapping={"revision": "0", "category": "stale"})
    redis_client.srem(keys.ITEM_IDS, "i4")
    assert mirror(settings, page_rows=1000) == Mirrored(items=5, written=1)
    assert redis_client.hgetall(keys.item_meta("i1")) == hashes["i1"]
    assert redis_client.smembers(keys.ITEM_IDS) == set(hashes) | {keys.ITEM_IDS_COMPLETE}


def test_the_mirror_skips_an_item_whose_key_holds_another_type(
        redis_client: redis.Redis, settings: Settings, pg: psycopg.Connection, caplog) -> None:
    """An item named "version" while a previous release's counter is a string at its key: the
    mirror stopped at its page, and every item after it in id order stayed unmirrored."""
    upsert(settings, *[ItemWithId(item_id=i, category="c1") for i in ("a", "version", "zz")])
    redis_client.flushdb()
    redis_client.set(keys.ITEM_META_VERSION_LEGACY, "41")
    with caplog.at_level("WARNING", logger="serving.catalogue_mirror"):
        assert mirror(settings, page_rows=1000) == Mirrored(items=3, written=2)
    assert "not mirrored, their key holds another type: ['version']" in caplog.text
    assert redis_client.hget(keys.item_meta("zz"), "category") == "c1"
    assert redis_client.smembers(keys.ITEM_IDS) == {"a", "zz", keys.ITEM_IDS_COMPLETE}


def test_reco_db_mirror_items(redis_client: redis.Redis, settings: Settings,
                              pg: psycopg.Connection) -> None:
    upsert(settings, ItemWithId(item_id="a", category="c1"))
    redis_client.flushdb()
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "mirror-items"], env={
            "RECO_PG_PORT": str(settings.pg_port), "RECO_REDIS_URL": settings.redis_url})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == "1 catalogue items, 1 of them written to Redis"
    assert redis_client.hget(keys.item_meta("a"), "category") == "c1"
