"""The category part of the popularity snapshot, refreshed on the event loop in slices."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis

from reco import keys
from reco.catalog import ItemIndex
from reco.settings import Settings
from serving.popularity_snapshot import PopularReads
from serving.reco_snapshots import GlobalSignals

CATEGORIES = 14
TOP, N = 400, 40  # global top held (two slices of 250); items read per asked category
ASKED = [f"c{k}" for k in (3, 0, 9, 12, 1, 5, 7, 2, 13, 4, 11, 6)]  # 12 of 14, not in order


def shop(r: redis.Redis) -> None:
    """~1,100 items in 14 categories of Zipf-like sizes, popularity as the processor writes it
    (a category's set holds its items), with ties; category scores differ from the global ones
    so that a member of both shows which sighting counted. `no-meta` is popular in the global
    top and in c0, `cat-only` and `cat-only-2` (also without metadata) only in c3's and c9's
    tops."""
    rng = np.random.default_rng(7)
    pipe = r.pipeline(transaction=False)
    for k in range(CATEGORIES):
        for j in range(10 + 300 // (k + 1)):
            item, score = f"c{k}-{j}", round(float(rng.pareto(1.0)) * 10, 1) + 0.1
            pipe.hset(keys.item_meta(item), mapping={"category": f"c{k}", "price": 1.0})
            pipe.sadd(keys.ITEM_IDS, item)
            pipe.zadd(keys.ITEM_POPULARITY, {item: score})
            pipe.zadd(keys.category_popularity(f"c{k}"), {item: score / 2})
    pipe.zadd(keys.ITEM_POPULARITY, {"no-meta": 500.0})
    pipe.zadd(keys.category_popularity("c0"), {"no-meta": 9000.0})
    pipe.zadd(keys.category_popularity("c3"), {"cat-only": 8000.0})
    pipe.zadd(keys.category_popularity("c9"), {"cat-only-2": 7000.0})
    pipe.execute()


def expected(r: redis.Redis) -> dict[str, float]:
    """Item -> snapshot score, computed directly: the global top, then each asked category's
    top in the order asked, a member's first sighting counting."""
    scores: dict[str, float] = {}
    for key, n in [(keys.ITEM_POPULARITY, TOP)] + [
            (keys.category_popularity(c), N) for c in ASKED]:
        for item, score in r.zrange(key, 0, n - 1, desc=True, withscores=True):
            scores.setdefault(item, score)
    return scores


def snapshot(items: ItemIndex) -> list[tuple[str, float]]:
    """(item, score) of a snapshot's popular items, most popular first."""
    return [(items.ids[row], float(items.popularity[row])) for row in items.popular_rows]


@pytest.fixture
def category_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"popular_snapshot_size": TOP,
                                       "popular_category_snapshot_n": N,
                                       "popular_category_snapshot_max": 64})


def test_on_loop_category_refresh_holds_what_a_direct_computation_gives(
        redis_url: str, category_settings: Settings) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    shop(r)
    want = expected(r)
    # Stable by score: ties keep the read order, as the snapshot's stable sort does.
    want_order = sorted(want.items(), key=lambda pair: -pair[1])
    assert want["no-meta"] == 500.0 and want["cat-only"] == 8000.0  # first sightings
    assert want["cat-only-2"] == 7000.0
    assert len(want) > TOP + 2  # categories bring members from beyond the global top
    blocking = GlobalSignals(category_settings)  # the unsliced read, one pipeline
    blocking.refresh()
    sliced = GlobalSignals(category_settings)
    got: list[list[tuple[str, float]]] = []

    async def refreshes() -> None:
        await sliced.refresh_async()  # the catalogue load; no category asked yet
        for category in ASKED:
            sliced.ask_category(category)
            blocking.ask_category(category)
        await sliced.refresh_async()  # `cat-only`s unknown: rows appended (`with_popularity`)
        got.append(snapshot(sliced.items))
        await sliced.refresh_async()  # every member known now: the row-mapped path
        got.append(snapshot(sliced.items))

    asyncio.run(refreshes())
    blocking.refresh()
    for signals in (blocking, sliced):
        signals.stop()
    assert got[0] == want_order and got[1] == want_order
    assert snapshot(blocking.items) == want_order
    assert sliced.categories == blocking.categories == frozenset(ASKED)
    items = sliced.items  # nothing else holds a score
    assert np.count_nonzero(items.popularity) == len(want)


def test_on_loop_category_refresh_lets_other_tasks_run_between_categories(
        redis_url: str, category_settings: Settings, monkeypatch) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    shop(r)
    signals = GlobalSignals(category_settings)
    ticks = 0
    at_add: list[int] = []  # the ticker's count as each reply was mapped
    add = PopularReads._add

    def counted_add(self: PopularReads, flat: list) -> int:
        at_add.append(ticks)
        return add(self, flat)

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def refresh_beside_a_ticker() -> None:
        await signals.refresh_async()
        for category in ASKED:
            signals.ask_category(category)
        await signals.refresh_async()  # the `cat-only`s join the catalogue's rows
        at_add.clear()
        monkeypatch.setattr(PopularReads, "_add", counted_add)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(ticker(stop))
        await signals.refresh_async()
        stop.set()
        await task

    asyncio.run(refresh_beside_a_ticker())
    signals.stop()
    by_category = at_add[-len(ASKED):]  # after the global top's two slices
    assert len(at_add) == 2 + len(ASKED)
    # 40 items each: six categories per slice of 250 members, the ticker running in between.
    assert len(set(by_category)) == 2 and by_category == sorted(by_category)
    assert [by_category.count(t) for t in sorted(set(by_category))] == [6, 6]
