"""DELETE /items/{item_id}: the PostgreSQL tombstone, the Redis tombstone and its revision, the
owed and full mirrors, and what the recommendation API serves after (real PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import psycopg
import redis
import redis.asyncio as aredis
from typer.testing import CliRunner

from reco import keys
from reco.cli import app as cli
from reco.settings import Settings, get_settings
from reco.stack.health import free_port
from serving import catalogue_mirror
from serving.catalogue import ItemWithId, mirror_items, store_delete, store_items
from serving.catalogue_sync import CatalogueSync
from serving.ingest import create_app
from serving.owed_mirrors import OwedMirrors
from tests.api.conftest import out_of_memory
from tests.api.test_catalog_updates import upsert
from tests.api.test_catalogue_ids import loaded, mirror

CATALOGUE = ("A", "B", "X", "Y", "Z", "W", "P")


def _ingest_settings(settings: Settings) -> Settings:
    """No broker: the catalogue routes need none (events would answer 503)."""
    return settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}",
                                       "ingest_ack_timeout_s": 1.0})


@asynccontextmanager
async def ingest_api(settings: Settings, retry_s: float | None = None
                     ) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_ingest_settings(settings))
    if retry_s is not None:
        app.state.catalogue.owed.retry_s = retry_s
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


def request(settings: Settings, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to a fresh ingest API (from synchronous tests)."""

    async def run() -> httpx.Response:
        async with ingest_api(settings) as client:
            return await client.request(method, path, **kw)

    return asyncio.run(run())


def run_with_stores(settings: Settings, work: Callable) -> Any:
    """`await work(pool, client)` on a PostgreSQL pool and a Redis client of their own."""

    async def run() -> Any:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        client = aredis.Redis.from_url(settings.redis_url)
        try:
            return await work(pool, client)
        finally:
            await pool.close()
            await client.aclose()

    return asyncio.run(run())


def _sample(metrics: str, name: str) -> float:
    return next(float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith(name + " "))


def served(client, path: str, **params: Any) -> list[str]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def test_a_deleted_item_is_served_nowhere_and_a_later_put_brings_it_back(
        world, make_client, api_settings: Settings, pg: psycopg.Connection) -> None:
    r = world["redis"]
    upsert(api_settings, *[ItemWithId(item_id=i, category=f"c{n}", price=10.0,
                                      created_at="2020-09-13T12:26:40Z")
                           for n, i in enumerate(CATALOGUE)],
           ItemWithId(item_id="N", category="c9", price=1.0))  # a new arrival, no events yet
    r.delete(keys.ITEM_META_CHANGES)  # upserted long ago: no full reload for their entries
    r.zadd(keys.co_view("U"), {"X": 3, "Y": 1})  # U: never in the catalogue
    r.zadd(keys.co_view("X"), {"X": 1, "Y": 1})
    with make_client() as client:
        signals = client.app.state.service.signals
        before = signals.items
        assert "X" in served(client, "/popular", k=20) and "N" in served(client, "/popular", k=20)
        assert "X" in served(client, "/items/A/similar")
        assert "X" in served(client, "/recommendations", user_id="u1", k=5)
        version = r.get(keys.ITEM_META_VERSION)

        deleted = request(api_settings, "DELETE", "/items/X")
        assert (deleted.status_code, deleted.json()) == (200, {"item_id": "X"})
        # Announced as upserts are: the changes set and the version.
        assert int(r.get(keys.ITEM_META_VERSION)) == int(version) + 1
        assert "X" in r.zrange(keys.ITEM_META_CHANGES, 0, -1)
        signals.refresh()
        assert signals.items.space == before.space  # applied in place, not by a full reload
        assert "X" not in served(client, "/popular", k=20)
        assert request(api_settings, "DELETE", "/items/N").status_code == 200
        signals.refresh()
        assert signals.items.space == before.space
        assert "N" not in served(client, "/popular", k=20)  # nor the new arrivals' filler
        assert "X" not in served(client, "/items/A/similar")
        assert "X" not in served(client, "/recommendations", user_id="u1", k=5)
        # Its own neighbours are served as an unknown item's are.
        assert served(client, "/items/X/similar") == served(client, "/items/U/similar") == ["Y"]

    with make_client() as client:  # a full reload (from item:ids or a SCAN) agrees
        assert {"X", "N"}.isdisjoint(served(client, "/popular", k=20))
        assert "X" not in served(client, "/items/A/similar")

    with make_client() as client:
        put = request(api_settings, "PUT", "/items/X", json={"category": "c2", "price": 5})
        assert put.status_code == 200
        client.app.state.service.signals.refresh()
        assert "X" in served(client, "/popular", k=20)
        assert "X" in served(client, "/items/A/similar")
    meta = r.hgetall(keys.item_meta("X"))
    assert "deleted" not in meta and meta["category"] == "c2"
    assert r.ttl(keys.item_meta("X")) == -1  # the tombstone's expiry went with it
    assert r.sismember(keys.ITEM_IDS, "X")
    # Put again, it is a new arrival (it was created long ago before its delete).
    created = pg.execute("SELECT extract(epoch FROM created_at)::float, deleted_at FROM items "
                         "WHERE item_id = 'X'").fetchone()
    assert abs(created[0] - time.time()) < 60 and created[1] is None


async def test_delete_answers_404_422_and_keeps_the_row_as_a_tombstone(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    async with ingest_api(settings) as client:
        deletes_before = _sample((await client.get("/metrics")).text,
                                 "catalogue_items_deleted_total")
        assert (await client.put("/items/a%2Fb", json={"category": "c1"})).status_code == 200
        revision = int(redis_client.hget(keys.item_meta("a/b"), "revision"))
        deleted = await client.delete("/items/a%2Fb")
        again = await client.delete("/items/a%2Fb")
        never = await client.delete("/items/nope")
        bad_id = await client.delete("/items/a%20b")
        patch = await client.patch("/items/a%2Fb", json={"price": 1})
        counted = _sample((await client.get("/metrics")).text, "catalogue_items_deleted_total")
        spec = (await client.get("/openapi.json")).json()
    assert (deleted.status_code, deleted.json()) == (200, {"item_id": "a/b"})
    for missing in (again, never):
        assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    assert bad_id.status_code == 422
    assert [e["field"] for e in bad_id.json()["detail"]] == ["path.item_id"]
    assert patch.status_code == 404  # a deleted item is no item to patch
    assert counted == deletes_before + 1
    assert set(spec["paths"]["/items/{item_id}"]["delete"]["responses"]) >= {
        "200", "401", "404", "422", "503"}
    # PostgreSQL keeps the row, at a newer revision; Redis a tombstone of that revision only,
    # expiring, and the id is no longer listed.
    row = pg.execute("SELECT revision, deleted_at IS NOT NULL FROM items").fetchone()
    assert row[0] > revision and row[1] is True
    assert redis_client.hgetall(keys.item_meta("a/b")) == {"revision": str(row[0]),
                                                          "deleted": "1"}
    assert 0 < redis_client.ttl(keys.item_meta("a/b")) <= keys.ITEM_TOMBSTONE_TTL_S
    assert not redis_client.sismember(keys.ITEM_IDS, "a/b")


async def test_delete_needs_an_api_key_when_auth_is_on(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    key = "k" * 32
    secure = settings.model_copy(update={"auth_enabled": True,
                                         "api_keys": Settings(api_keys=key).api_keys})
    async with ingest_api(secure) as client:
        put = await client.put("/items/i1", json={}, headers={"X-API-Key": key})
        missing = await client.delete("/items/i1")
        wrong = await client.delete("/items/i1", headers={"X-API-Key": "w" * 32})
        ok = await client.delete("/items/i1", headers={"X-API-Key": key})
    assert put.status_code == 200
    assert (missing.status_code, wrong.status_code, ok.status_code) == (401, 401, 200)
    assert pg.execute("SELECT deleted_at IS NOT NULL FROM items").fetchone() == (True,)


async def test_delete_is_503_with_retry_after_while_a_store_is_down(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    async with ingest_api(settings) as client:
        assert (await client.put("/items/i1", json={})).status_code == 200
    async with ingest_api(settings.model_copy(update={"pg_port": free_port()})) as client:
        no_postgres = await client.delete("/items/i1")
    hung = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"})
    async with ingest_api(hung) as client:
        no_redis = await client.delete("/items/i1")
    for response in (no_postgres, no_redis):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
    # PostgreSQL committed before Redis refused: its retry answers 404, mirroring it again.
    assert redis_client.hget(keys.item_meta("i1"), "deleted") is None
    async with ingest_api(settings) as client:
        retried = await client.delete("/items/i1")
    assert retried.status_code == 404
    assert redis_client.hget(keys.item_meta("i1"), "deleted") == "1"
    assert not redis_client.sismember(keys.ITEM_IDS, "i1")


def test_an_older_upsert_landing_after_the_delete_does_not_bring_the_item_back(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis,
        caplog) -> None:
    """Two ingest replicas: one upserts S, the other deletes it; PostgreSQL orders them, and
    the upsert's Redis write (slower replica, or an owed retry) lands last."""

    async def two_replicas(pool: asyncpg.Pool, client: aredis.Redis) -> None:
        upserted = await store_items(pool, [ItemWithId(item_id="S", category="c1")])
        tombstone, deleted_now = await store_delete(pool, "S")
        assert deleted_now
        await mirror_items(client, [tombstone])
        await mirror_items(client, upserted)  # the slower replica's write lands last
        owed = OwedMirrors(client)
        owed.owe(upserted)  # and once more, as an owed retry
        assert await owed.retry()

    with caplog.at_level("WARNING", logger="serving.catalogue"):
        run_with_stores(settings, two_replicas)
    assert "1 item(s) not mirrored, Redis holds a newer revision: ['S']" in caplog.text
    assert redis_client.hget(keys.item_meta("S"), "deleted") == "1"
    assert redis_client.hget(keys.item_meta("S"), "category") is None
    assert not redis_client.sismember(keys.ITEM_IDS, "S")
    assert loaded(settings) == {}
    # The other way round: a delete older than the hash's revision is kept out too.

    async def stale_delete(pool: asyncpg.Pool, client: aredis.Redis) -> None:
        tombstone, _ = await store_delete(pool, "T")
        recreated = await store_items(pool, [ItemWithId(item_id="T", category="c2")])
        await mirror_items(client, recreated)
        await mirror_items(client, [tombstone])

    upsert(settings, ItemWithId(item_id="T", category="c1"))
    run_with_stores(settings, stale_delete)
    assert redis_client.hget(keys.item_meta("T"), "category") == "c2"
    assert redis_client.sismember(keys.ITEM_IDS, "T")


def test_a_full_mirror_racing_a_delete_does_not_bring_the_item_back(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis,
        monkeypatch) -> None:
    """The mirror read an item's row (Redis behind: it lost the hash), the item was deleted
    and its tombstone mirrored, then the mirror wrote the row it had read."""
    upsert(settings, *[ItemWithId(item_id=f"i{n}", category="c1") for n in range(3)])
    redis_client.delete(keys.item_meta("i1"))  # lost: the mirror will write it
    original = catalogue_mirror.mirror_items
    deletes = []

    async def deleted_meanwhile(client, rows, **kw):
        if not deletes:
            pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
            try:
                tombstone, _ = await store_delete(pool, "i1")
            finally:
                await pool.close()
            await original(client, [tombstone])
            deletes.append(tombstone)
        await original(client, rows, **kw)

    monkeypatch.setattr(catalogue_mirror, "mirror_items", deleted_meanwhile)
    mirror(settings, page_rows=1000)
    assert deletes and redis_client.hget(keys.item_meta("i1"), "deleted") == "1"
    assert redis_client.smembers(keys.ITEM_IDS) == {"i0", "i2", keys.ITEM_IDS_COMPLETE}
    monkeypatch.undo()
    # The next pass reads i1 deleted and leaves everything as it is.
    assert mirror(settings) == catalogue_mirror.Mirrored(items=2, written=0, deleted=1)
    assert loaded(settings) == {"i0": "c1", "i2": "c1"}


async def test_a_delete_redis_refused_is_owed_and_mirrored_once_it_takes_writes(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    async with ingest_api(settings, retry_s=0.2) as client:
        assert (await client.put("/items/gone", json={"category": "c1"})).status_code == 200
        with out_of_memory(redis_client):
            refused = await client.delete("/items/gone")
            await asyncio.sleep(0.5)  # retries refused meanwhile
            assert redis_client.hget(keys.item_meta("gone"), "category") == "c1"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not redis_client.hexists(
                keys.item_meta("gone"), "deleted"):
            await asyncio.sleep(0.1)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert pg.execute("SELECT deleted_at IS NOT NULL FROM items").fetchone() == (True,)
    assert redis_client.hget(keys.item_meta("gone"), "deleted") == "1"
    assert redis_client.smembers(keys.ITEM_IDS) == set()
    assert "gone" in redis_client.zrange(keys.ITEM_META_CHANGES, 0, -1)


def test_the_full_mirror_removes_items_deleted_in_postgres(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    """Deleted while their ingest replica could not reach Redis and then stopped (owed rows are
    held in memory only): the maintenance DAG's mirror removes them, announced."""
    upsert(settings, *[ItemWithId(item_id=f"i{n}", category="c1") for n in range(4)])
    assert mirror(settings) == catalogue_mirror.Mirrored(items=4, written=0)
    for item in ("i1", "i3"):
        run_with_stores(settings, lambda pool, _, item=item: store_delete(pool, item))
    version = int(redis_client.get(keys.ITEM_META_VERSION))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["db", "mirror-items"], env={
            "RECO_PG_PORT": str(settings.pg_port), "RECO_REDIS_URL": settings.redis_url})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == (
        "2 catalogue items and 2 deleted ones, 2 of them written to Redis")
    for item in ("i1", "i3"):
        assert redis_client.hgetall(keys.item_meta(item)).keys() == {"revision", "deleted"}
    assert redis_client.smembers(keys.ITEM_IDS) == {"i0", "i2", keys.ITEM_IDS_COMPLETE}
    assert int(redis_client.get(keys.ITEM_META_VERSION)) == version + 1  # announced
    assert loaded(settings) == {"i0": "c1", "i2": "c1"}
    # Redis lost everything: deleted items are not written back, not even as tombstones.
    redis_client.flushdb()
    assert mirror(settings) == catalogue_mirror.Mirrored(items=2, written=2, deleted=2)
    assert not redis_client.exists(keys.item_meta("i1"), keys.item_meta("i3"))
    assert redis_client.smembers(keys.ITEM_IDS) == {"i0", "i2", keys.ITEM_IDS_COMPLETE}


def test_readers_of_the_metadata_hashes_take_a_tombstone_for_no_item(
        settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis) -> None:
    """A full reload that scans the keyspace (`item:ids` not known complete) finds the
    tombstone's hash; the processor's HGET of an item's category finds none."""
    upsert(settings, ItemWithId(item_id="a", category="c1"),
           ItemWithId(item_id="b", category="c2"))
    assert request(settings, "DELETE", "/items/b").status_code == 200
    assert redis_client.exists(keys.item_meta("b"))
    assert not redis_client.sismember(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE)  # so: a SCAN
    assert loaded(settings) == {"a": "c1"}
    assert redis_client.hget(keys.item_meta("b"), "category") is None
    sync = CatalogueSync(settings)
    try:
        assert sync.read_meta(["b"]) == {"b": {}}
    finally:
        sync.close()
