"""Fixtures of the recommendation API tests: a hand-built feature set written into real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from fastapi.testclient import TestClient

from reco import keys, neighbours
from reco.settings import Settings
from serving.recommendations import create_app

HOUR = 3600.0
DAY = 86_400.0
OLD = 1_600_000_000.0  # created long ago: no freshness boost


def put_recent(r: redis.Redis, user: str, items: list[tuple[str, float]]) -> None:
    """What the feature processor keeps: distinct items newest first, and last-touch times."""
    r.delete(keys.user_recent(user), keys.user_recent_times(user))
    r.rpush(keys.user_recent(user), *[i for i, _ in items])
    r.hset(keys.user_recent_times(user), mapping=dict(items))


def touch(r: redis.Redis, user: str, item: str, at: float) -> None:
    """One new event of `user` on `item`, as the processor applies it."""
    pipe = r.pipeline()
    pipe.lrem(keys.user_recent(user), 0, item)
    pipe.lpush(keys.user_recent(user), item)
    pipe.ltrim(keys.user_recent(user), 0, 49)
    pipe.hset(keys.user_recent_times(user), item, at)
    pipe.set(keys.user_last_event(user), str(uuid.uuid4()))
    pipe.execute()


def put_meta(r: redis.Redis, item: str, category: str, price: float = 10.0,
             in_stock: bool = True, created_at: float = OLD) -> None:
    r.hset(keys.item_meta(item), mapping={"category": category, "price": price,
                                          "in_stock": "1" if in_stock else "0",
                                          "created_at": created_at, "title": item})
    r.sadd(keys.ITEM_IDS, item)  # as the catalogue's writer does (serving/catalogue.py)


@contextmanager
def out_of_memory(r: redis.Redis) -> Iterator[None]:
    """Redis refusing every write (maxmemory below its usage, noeviction), restored after:
    the server is the session's, shared by later tests."""
    before = r.config_get("maxmemory", "maxmemory-policy")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        yield
    finally:
        r.config_set("maxmemory", before["maxmemory"])
        r.config_set("maxmemory-policy", before["maxmemory-policy"])


@pytest.fixture
def world(redis_client: redis.Redis) -> dict:
    """The scenario the exact-ranking tests compute by hand (see test_recommendations.py).

    User u1 viewed A one minute ago and B one hour earlier (half-life one hour). A co-views
    X:4, Y:2; B co-views Y:2, Z:1; Item2Vec v1 neighbours A -> Z .8, X .4 and B -> W .6;
    popularity X 10, Y 20, Z 5, W 40, P 100, A 50.
    """
    now = time.time()
    r = redis_client
    put_recent(r, "u1", [("A", now - 60), ("B", now - 60 - HOUR)])
    r.zadd(keys.co_view("A"), {"X": 4, "Y": 2})
    r.zadd(keys.co_view("B"), {"Y": 2, "Z": 1})
    r.hset(keys.MODEL_VERSIONS, "item2vec", "v1")
    r.set(keys.item_knn("A", "v1"), neighbours.encode(["Z", "X"], [0.8, 0.4]))
    r.set(keys.item_knn("B", "v1"), neighbours.encode(["W"], [0.6]))
    r.zadd(keys.ITEM_POPULARITY, {"X": 10, "Y": 20, "Z": 5, "W": 40, "P": 100, "A": 50})
    for n, item in enumerate(["A", "B", "X", "Y", "Z", "W", "P"]):
        put_meta(r, item, f"c{n}")
    return {"now": now, "redis": r}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    # The hand-computed expectations of these tests use these ranking values (the defaults when
    # they were written; the defaults are now tuned on MovieLens, benchmarks/reports/tuning.md).
    return settings.model_copy(update={"reco_recency_half_life_s": HOUR,
                                       "popular_snapshot_refresh_s": 3600.0,
                                       "w_coview": 0.4, "w_embed": 0.3, "w_pop": 0.2,
                                       "w_recency": 0.1, "w_cf": 0.0, "w_seq": 0.0,
                                       "reco_recent_n": 10,
                                       "reco_neighbours_n": 50, "reco_source_half_n": 0.0,
                                       "reco_neighbour_agg": "max", "max_category_share": 0.5})


@pytest.fixture
def make_client(api_settings: Settings) -> Callable:
    """`with make_client(**setting_overrides) as client:` an app over the test's Redis db."""

    @contextmanager
    def _make(**overrides) -> Iterator[TestClient]:
        app = create_app(api_settings.model_copy(update=overrides))
        with TestClient(app) as client:
            yield client

    return _make


@pytest.fixture
def client(make_client: Callable, world: dict) -> Iterator[TestClient]:
    with make_client() as c:
        yield c
