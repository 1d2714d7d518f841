"""Catalogue upserts reach the recommendation API in place: same row space, no full reload
(real Redis; real PostgreSQL where the upsert goes through the ingest API's `Catalogue`)."""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
import numpy as np
import redis
import redis.asyncio as aredis

from reco import keys
from reco.catalog import UNKNOWN_CATEGORY, ItemIndex
from reco.ranking import RankConfig, UserFeatures, rank
from reco.settings import Settings
from serving.catalogue import UPSERT_ITEMS, ItemWithId, announce_changes, mirror_items
from serving.ingest import Catalogue
from serving.reco_service import RecoParams
from serving.reco_snapshots import GlobalSignals
from tests.api.conftest import put_meta
from tests.api.test_recommendations import get, ids_scores, metric

DAY_MS = 86_400_000


def popular_ids(items: ItemIndex) -> list[str]:
    """What a user without features is recommended: the popular eligible items."""
    ranking = rank(UserFeatures([], {}, time.time()), items, RankConfig(), k=10)
    return [i.item_id for i in ranking.items]


def test_with_metadata_updates_rows_in_the_same_space() -> None:
    old = ItemIndex.build({"a": {"category": "c1", "price": "5", "in_stock": "1"},
                           "b": {"category": "c2", "price": "7"}},
                          [("b", 3.0), ("a", 2.0), ("p", 1.0)])  # p: popular, no metadata
    assert popular_ids(old) == ["b", "a"]  # fills the filler cache; p is no catalogue item
    assert old._filler

    new = old.with_metadata({"a": {"category": "c1", "price": "6", "in_stock": "0"},
                             "n": {"category": "c3", "price": "1", "created_at": "1.7e9"},
                             "p": {"category": "c2"}}, version="7")

    assert new.space == old.space and new.version == "7"
    assert new.ids == ["a", "b", "p", "n"] and new.rows(["a", "b", "p", "n"]).tolist() == [
        0, 1, 2, 3]  # existing rows kept, the unknown item appended
    assert new.categories == ["c1", "c2", "c3"] and new.code_of("c3") == 2
    assert new.category.tolist() == [0, 1, 1, 2, UNKNOWN_CATEGORY]
    assert new.price[[0, 1, 3]].tolist() == [6.0, 7.0, 1.0]
    assert math.isnan(new.price[2]) and math.isnan(new.price[4])
    assert new.in_stock.tolist() == [False, True, True, True, False]  # unknown row: ineligible
    assert new.created_at[3] == 1.7e9
    # The popularity snapshot is kept; the appended item has none.
    assert new.popular_rows.tolist() == old.popular_rows.tolist() == [1, 0, 2]
    assert new.popularity.tolist() == [2.0, 3.0, 1.0, 0.0, 0.0]
    # a is out of stock now; p is in the catalogue now; n is a new arrival (no popularity).
    assert new._filler == {} and popular_ids(new) == ["b", "p", "n"]
    # The old snapshot, which requests may still rank with, is untouched.
    assert old.ids == ["a", "b", "p"] and "n" not in old.row and old.unknown_row == 3
    assert old.categories == ["c1", "c2"] and old.category_code == {"c1": 0, "c2": 1}
    assert old.category.tolist() == [0, 1, UNKNOWN_CATEGORY, UNKNOWN_CATEGORY]
    assert old.price[0] == 5.0 and old.in_stock.tolist() == [True, True, False, False]
    assert popular_ids(old) == ["b", "a"]


def upsert(settings: Settings, *items: ItemWithId) -> list[str]:
    """The items upserted as the ingest API does (its `Catalogue`), on their own pool and
    client."""

    async def run() -> list[str]:
        catalogue = Catalogue(settings)
        try:
            return await catalogue.upsert(list(items))
        finally:
            await catalogue.close()

    return asyncio.run(run())


def test_upserted_stock_change_applies_in_place_at_the_next_refresh(
        world, make_client, api_settings: Settings, pg) -> None:
    r = world["redis"]
    r.zadd(keys.ITEM_META_CHANGES, {"stale": time.time() * 1000 - 2 * DAY_MS})
    with make_client() as client:
        signals = client.app.state.service.signals
        before = signals.items
        ineligible = metric(client, "recommendation_cache_ineligible_total")
        assert "X" in [i for i, _ in ids_scores(get(client, k=5))]
        assert get(client, k=5)["cached"] is True
        upsert(api_settings, ItemWithId(item_id="X", category="c2", price=10.0, in_stock=False))
        signals.refresh()
        # The cached answer shows X, sold out since: re-ranked, not served.
        fresh = get(client, k=5)
        assert fresh["cached"] is False and "X" not in [i for i, _ in ids_scores(fresh)]
        assert metric(client, "recommendation_cache_ineligible_total") == ineligible + 1
        assert get(client, k=5)["cached"] is True
        after = signals.items
    assert after.space == before.space and after.ids == before.ids  # no full reload
    assert not after.in_stock[after.row["X"]] and before.in_stock[before.row["X"]]
    assert after.category[after.row["X"]] == after.code_of("c2")
    # The upsert stamped X, trimmed the day-old entry and bumped the version.
    assert [m for m, _ in r.zrange(keys.ITEM_META_CHANGES, 0, -1, withscores=True)] == ["X"]
    assert r.get(keys.ITEM_META_VERSION) == "1"


def test_cached_answers_outlive_upserts_that_keep_their_items_eligible(
        world, make_client, api_settings: Settings, pg) -> None:
    """Only the entry's own items are checked after a catalogue change: an upsert of another
    item, or one keeping the item within the request's rules, leaves the entry served; a price
    moving an item out of the asked range does not."""
    with make_client() as client:
        signals = client.app.state.service.signals
        ineligible = metric(client, "recommendation_cache_ineligible_total")
        shown = [i for i, _ in ids_scores(get(client, k=3, max_price=20))]
        assert "P" not in shown and "X" in shown
        upsert(api_settings, ItemWithId(item_id="P", category="c6", in_stock=False))
        signals.refresh()
        assert get(client, k=3, max_price=20)["cached"] is True
        assert get(client, k=3, max_price=20)["cached"] is True  # flushes the re-stamp
        key = keys.reco_cache("u1", RecoParams("u1", k=3, max_price=20).variant)
        r = world["redis"]
        fingerprint, stamp, per_category = r.get(key).split("\n", 1)[0].split(" ")
        assert stamp == '"1"'  # re-stamped with the catalogue version now served
        assert per_category == "1"  # the cap: half of 3
        # A replica a refresh ahead stamped it "9": checked here, but never stamped back.
        r.set(key, r.get(key).replace(f'{fingerprint} "1"', f'{fingerprint} "9"', 1),
              keepttl=True)
        assert get(client, k=3, max_price=20)["cached"] is True
        assert get(client, k=3, max_price=20)["cached"] is True  # would flush a re-stamp
        assert r.get(key).startswith(f'{fingerprint} "9" 1\n')
        upsert(api_settings, ItemWithId(item_id="X", category="c2", price=19.0))
        signals.refresh()
        assert get(client, k=3, max_price=20)["cached"] is True
        upsert(api_settings, ItemWithId(item_id="X", category="c2", price=25.0))
        signals.refresh()
        fresh = get(client, k=3, max_price=20)
        assert fresh["cached"] is False and "X" not in [i for i, _ in ids_scores(fresh)]
        assert metric(client, "recommendation_cache_ineligible_total") == ineligible + 1


def test_a_cached_answer_that_an_upsert_puts_over_the_category_cap_is_ranked_again(
        world, make_client, api_settings: Settings, pg) -> None:
    """X, Y, Z, W: four categories. Y and Z moved into X's: three of four in one category,
    over the cap of 2 (max_category_share 0.5), while W and P could take their places."""
    with make_client() as client:
        signals = client.app.state.service.signals
        assert [i for i, _ in ids_scores(get(client, k=4))] == ["X", "Y", "Z", "W"]
        assert get(client, k=4)["cached"] is True
        upsert(api_settings, ItemWithId(item_id="Y", category="c2"),
               ItemWithId(item_id="Z", category="c2"))
        signals.refresh()
        fresh = get(client, k=4)
        assert fresh["cached"] is False
        assert [i for i, _ in ids_scores(fresh)] == ["X", "Y", "W", "P"]  # Z deferred
        assert get(client, k=4)["cached"] is True


def test_an_answer_over_the_cap_for_want_of_other_items_outlives_unrelated_upserts(
        world, make_client, api_settings: Settings, pg) -> None:
    """X, Y, Z and W share a category and only P is of another: the answer holds four of one
    category, over the cap of 2, because ranking had nothing else. Every catalogue change,
    even of an item it does not show, re-ranked it and counted it ineligible."""
    for item in ("X", "Y", "Z", "W"):
        put_meta(world["redis"], item, "c2")
    with make_client() as client:
        signals = client.app.state.service.signals
        ineligible = metric(client, "recommendation_cache_ineligible_total")
        assert sorted(i for i, _ in ids_scores(get(client, k=5))) == ["P", "W", "X", "Y", "Z"]
        upsert(api_settings, ItemWithId(item_id="Q", category="c9"))
        signals.refresh()
        assert get(client, k=5)["cached"] is True
        assert metric(client, "recommendation_cache_ineligible_total") == ineligible
        # One more item of the full category takes it past what the entry allowed.
        upsert(api_settings, ItemWithId(item_id="P", category="c2"))
        signals.refresh()
        assert get(client, k=5)["cached"] is False
        assert metric(client, "recommendation_cache_ineligible_total") == ineligible + 1


def test_a_replica_whose_clock_runs_ahead_hides_no_other_replicas_change(
        world, api_settings: Settings, pg, monkeypatch) -> None:
    """Change entries were stamped with each ingest host's clock: after one from a replica two
    minutes ahead, another replica's sold-out item fell below the readers' window and was
    recommended until the next full reload (5 minutes), cached answers included."""
    signals = GlobalSignals(api_settings)
    signals.refresh()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 120)  # replica A's clock
    upsert(api_settings, ItemWithId(item_id="W", category="c5"))
    monkeypatch.setattr(time, "time", real_time)  # replica B's
    signals.refresh()
    upsert(api_settings, ItemWithId(item_id="X", category="c2", in_stock=False))
    signals.refresh()
    assert not signals.items.in_stock[signals.items.row["X"]]
    newest = world["redis"].zrange(keys.ITEM_META_CHANGES, -1, -1, withscores=True)[0][1]
    assert abs(newest - time.time() * 1000) < 60_000  # Redis's clock, the same host here


def test_more_changes_than_the_bound_reload_everything(
        world, make_client, api_settings: Settings, pg) -> None:
    with make_client() as client:
        signals = client.app.state.service.signals
        before = signals.items
        bound = int(len(before.ids) * api_settings.catalog_update_max_share)
        assert bound == 1  # 7 items, a fifth of them
        upsert(api_settings, ItemWithId(item_id="X", category="c2", in_stock=False),
               ItemWithId(item_id="Y", category="c9"))
        signals.refresh()
        after = signals.items
        assert "X" not in [i for i, _ in ids_scores(get(client, k=6))]
    assert after.space != before.space
    assert after.category[after.row["Y"]] == after.code_of("c9")


def test_a_version_bump_without_change_entries_reloads_everything(
        world, make_client) -> None:
    r = world["redis"]
    with make_client() as client:
        signals = client.app.state.service.signals
        before = signals.items
        put_meta(r, "X", "c2", in_stock=False)  # a writer that only bumps the version
        r.incr(keys.ITEM_META_VERSION)
        signals.refresh()
        after = signals.items
    assert after.space != before.space and not after.in_stock[after.row["X"]]


def test_on_loop_refresh_applies_changes_in_place(redis_url: str, settings: Settings) -> None:
    """The refresh_async path: a changed item and an item new to the catalogue, whose row is
    appended; a refresh without a version move does nothing; the next change re-reads only
    its item, not those of the margin window applied already."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in range(30):
        put_meta(r, f"i{n}", f"c{n % 2}")
    r.zadd(keys.ITEM_POPULARITY, {f"i{n}": float(n) for n in range(30)})
    signals = GlobalSignals(settings)

    async def change(*item_ids: str) -> None:
        client = aredis.Redis.from_url(redis_url)
        pipe = client.pipeline(transaction=False)
        announce_changes(pipe, item_ids)
        await pipe.execute()
        await client.aclose()

    async def scenario() -> tuple[ItemIndex, ...]:
        await signals.refresh_async()
        first = signals.items
        put_meta(r, "i29", "c0", in_stock=False)
        put_meta(r, "new", "c7")
        await change("i29", "new")
        await signals.refresh_async()
        second = signals.items
        await signals.refresh_async()
        third = signals.items
        put_meta(r, "i29", "c0", in_stock=True)  # unannounced: waits for the full reload
        put_meta(r, "i28", "c0", in_stock=False)
        await change("i28")
        await signals.refresh_async()
        return first, second, third, signals.items

    try:
        first, second, third, fourth = asyncio.run(scenario())
    finally:
        signals.stop()
        r.close()
    assert second.space == first.space == third.space
    assert second.ids == [*first.ids, "new"] and second.code_of("c7") == 2
    assert second.in_stock[second.row["new"]] and not second.in_stock[second.row["i29"]]
    assert popular_ids(second)[:2] == ["i28", "i27"] and popular_ids(first)[0] == "i29"
    assert np.array_equal(second.popular_rows, first.popular_rows)
    assert third.ids == second.ids and third.category is second.category  # not rebuilt
    assert fourth.space == first.space and popular_ids(fourth)[:2] == ["i27", "i26"]


def test_changes_applied_already_do_not_count_against_the_bound(
        redis_url: str, settings: Settings) -> None:
    """Steady upserts: the margin window re-reads the last refresh's changes, and only the new
    ones count, so two refreshes of 5 changes each stay in place with a bound of 6."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in range(30):
        put_meta(r, f"i{n}", f"c{n % 2}")
    signals = GlobalSignals(settings)

    def upsert_stock(*item_ids: str) -> None:
        for item in item_ids:
            put_meta(r, item, "c0", in_stock=False)
        pipe = r.pipeline(transaction=False)
        announce_changes(pipe, item_ids)
        pipe.execute()

    try:
        signals.refresh()
        first = signals.items
        assert int(len(first.ids) * settings.catalog_update_max_share) == 6
        upsert_stock("i0", "i1", "i2", "i3", "i4")
        signals.refresh()
        upsert_stock("i5", "i6", "i7", "i8", "i9")
        signals.refresh()
        last = signals.items
    finally:
        signals.stop()
        r.close()
    assert last.space == first.space
    assert not last.in_stock[[last.row[f"i{n}"] for n in range(10)]].any()


def test_a_version_whose_changes_were_applied_already_still_labels_the_catalogue(
        redis_url: str, settings: Settings) -> None:
    """An upsert landing between a refresh's version read and its change read is applied under
    the older label; the next refresh, seeing only applied changes, moves the label (cache
    entries are stamped with it), without a reload."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in range(30):
        put_meta(r, f"i{n}", "c0")
    signals = GlobalSignals(settings)
    try:
        signals.refresh()
        first = signals.items
        put_meta(r, "i3", "c0", in_stock=False)
        pipe = r.pipeline(transaction=False)
        announce_changes(pipe, ["i3"])
        pipe.execute()
        signals.refresh()
        applied = signals.items
        r.incr(keys.ITEM_META_VERSION)  # no new change entry: i3's is applied already
        signals.refresh()
        last = signals.items
    finally:
        signals.stop()
        r.close()
    assert (applied.version, last.version) == ("1", "2")
    assert last.space == first.space and not last.in_stock[last.row["i3"]]


def test_an_item_named_version_is_an_ordinary_item(
        world, make_client, api_settings: Settings, pg) -> None:
    """The catalogue version counter lived at `item:meta:version`, the meta key of an item with
    the id "version": its upsert then failed on the counter (WRONGTYPE, after PostgreSQL was
    written) and the reload skipped it. A previous release's counter left there as a string is
    skipped by type."""
    r = world["redis"]
    assert upsert(api_settings, ItemWithId(item_id="version", category="c9", price=3.0)) == [
        "version"]
    assert r.hgetall(keys.item_meta("version"))["category"] == "c9"
    assert r.get(keys.ITEM_META_VERSION) == "1"
    with make_client() as client:
        items = client.app.state.service.signals.items
        assert items.category[items.row["version"]] == items.code_of("c9")
    r.delete(keys.item_meta("version"))
    r.set(keys.ITEM_META_VERSION_LEGACY, "41")  # the counter as the previous release left it
    with make_client() as client:
        items = client.app.state.service.signals.items
        assert "version" not in items.row and "A" in items.row


def test_an_older_upsert_landing_last_in_redis_is_not_applied(
        world, api_settings: Settings, pg, caplog) -> None:
    """Two ingest replicas upsert one item: in stock, then sold out. PostgreSQL orders them;
    their Redis writes can land the other way round, and the sold-out item was then served as
    in stock until its next upsert (the full reload reads Redis)."""
    r = world["redis"]

    async def two_replicas() -> None:
        pool = await asyncpg.create_pool(api_settings.database_url, min_size=1, max_size=1)
        client = aredis.Redis.from_url(api_settings.redis_url)
        try:
            columns = [["S"], ["t"], ["c1"], [5.0], [True], ["{}"], [None]]
            in_stock = await pool.fetch(UPSERT_ITEMS, *columns)
            columns[4] = [False]
            sold_out = await pool.fetch(UPSERT_ITEMS, *columns)
            await mirror_items(client, sold_out)
            await mirror_items(client, in_stock)  # the slower replica's write lands last
        finally:
            await pool.close()
            await client.aclose()

    with caplog.at_level("WARNING", logger="serving.catalogue"):
        asyncio.run(two_replicas())
    assert "1 item(s) not mirrored, Redis holds a newer revision: ['S']" in caplog.text
    assert r.hget(keys.item_meta("S"), "in_stock") == "0"
    assert pg.execute("SELECT in_stock FROM items WHERE item_id = 'S'").fetchone()[0] is False
    # An ordinary upsert still applies, clearing a field it no longer has.
    upsert(api_settings, ItemWithId(item_id="S", category="c2"))
    meta = r.hgetall(keys.item_meta("S"))
    assert (meta["category"], meta["in_stock"], "price" in meta) == ("c2", "1", False)
