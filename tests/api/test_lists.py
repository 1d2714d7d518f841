"""The in-process item-list cache and the threadpool serving mode."""

from __future__ import annotations

import numpy as np

from reco.catalog import ItemIndex
from reco.ranking import RowList
from serving.reco_lists import ItemListCache
from serving.reco_store import ListKey
from tests.api.conftest import put_meta
from tests.api.test_recommendations import EXPECTED, assert_ranking, get


def test_list_cache_maps_rows_expires_and_follows_row_space() -> None:
    items = ItemIndex.build({"a": {}, "b": {}})
    cache = ItemListCache(max_entries=2, coview_ttl_s=10, offline_ttl_s=100)
    key = ListKey("coview", "x", "")
    value = cache.put(key, (["b", "a"], np.array([2.0, 1.0])), items, now=0.0)
    assert isinstance(value, RowList) and value.rows.tolist() == [1, 0]
    got = cache.get(key, items, now=5.0)
    assert isinstance(got, RowList) and got.rows is value.rows and got.scores is value.scores
    assert cache.get(key, items, now=11.0) is None  # co-view TTL passed
    assert cache.get(key, ItemIndex.build({}), now=5.0) is None  # catalogue reloaded
    grown = items.with_popularity(["new"], [1.0])  # rows appended: same space
    assert grown.space == items.space and grown.rows(["a", "b", "new"]).tolist() == [0, 1, 2]
    assert cache.get(key, grown, now=5.0).rows is value.rows  # still valid in the grown index
    # ... but rows mapped by the grown index are not served to a request still ranking with
    # the shorter index it took before the popularity refresh appended rows.
    newer = ListKey("coview", "w", "")
    cache.put(newer, (["new", "a"], np.array([2.0, 1.0])), grown, now=0.0)
    assert cache.get(newer, grown, now=1.0).rows.tolist() == [2, 0]
    assert cache.get(newer, items, now=1.0) is None
    # Lists naming unknown items stay as ids; the oldest entry goes past max_entries.
    raw = (["zz"], np.array([1.0]))
    assert cache.put(ListKey("knn", "y", "v1"), raw, items, now=0.0) is raw
    assert cache.get(ListKey("knn", "y", "v1"), items, now=1.0) == raw
    cache.put(ListKey("knn", "z", "v1"), raw, items, now=0.0)
    assert len(cache) == 2 and cache.get(key, items, now=1.0) is None
    # Lookups per kind, [hits, misses]: what the benchmark reports as the hit ratio.
    assert cache.lookups["coview"] == [3, 4] and cache.lookups["knn"] == [1, 0]


def test_lookup_order_keeps_every_row_and_id() -> None:
    items = ItemIndex.build({f"i{n}": {"category": f"c{n % 3}"} for n in range(50)},
                            [("i7", 5.0), ("i3", 9.0), ("gone", 1.0)])
    hot = items.with_lookup_order(["i3", "i7", "gone", "unknown", "i3"])
    assert hot.ids == items.ids and hot.row == items.row and hot.space == items.space
    assert list(hot.row)[:3] == ["i3", "i7", "gone"]  # laid out popular first
    assert hot.rows(["i7", "nope", "gone"]).tolist() == items.rows(["i7", "nope", "gone"]).tolist()
    assert hot.unknown_row == items.unknown_row and hot.popular_rows is items.popular_rows


def test_threadpool_mode_serves_the_same_ranking(make_client, world) -> None:
    with make_client(reco_redis_in_threads=True) as client:
        first = get(client, k=10)
        assert_ranking(first, sorted(EXPECTED.items(), key=lambda kv: -kv[1]))
        assert get(client, k=10)["cached"] is True


def test_a_reread_list_with_the_same_members_keeps_its_rows_and_takes_new_scores() -> None:
    items = ItemIndex.build({"a": {}, "b": {}, "c": {}})
    cache = ItemListCache(max_entries=10, coview_ttl_s=10, offline_ttl_s=100)
    key = ListKey("coview", "x", "")
    first = cache.put(key, (["b", "a"], np.array([2.0, 1.0])), items, now=0.0)
    assert cache.get(key, items, now=11.0) is None  # expired: the caller re-reads it
    again = cache.put(key, (["b", "a"], np.array([5.0, 4.0])), items, now=11.0)
    assert again.rows is first.rows and again.scores.tolist() == [5.0, 4.0]
    moved = cache.put(key, (["a", "c"], np.array([3.0, 1.0])), items, now=12.0)
    assert moved.rows.tolist() == [0, 2]
    assert cache.get(key, items, now=13.0).rows.tolist() == [0, 2]


def test_als_user_list_is_kept_parsed_per_model_version(world, make_client) -> None:
    from reco import keys, neighbours

    r = world["redis"]
    r.hset(keys.MODEL_VERSIONS, "als", "a1")
    r.set(keys.user_cf("u2", "a1"), neighbours.encode(["Q", "P"], [2.0, 1.0]))
    put_meta(r, "Q", "c9")  # in the catalogue, as items recommended are
    with make_client(w_cf=0.5) as client:
        first = get(client, user_id="u2", k=3)
        assert [i["item_id"] for i in first["items"]] == ["Q", "P", "A"]
        # A later miss of the same user (another k) ranks with the list parsed for a1 ...
        r.set(keys.user_cf("u2", "a1"), neighbours.encode(["Z"], [1.0]))  # (never happens:
        again = get(client, user_id="u2", k=2)  # versioned lists are immutable)
        assert again["cached"] is False
        assert [i["item_id"] for i in again["items"]] == ["Q", "P"]
        # ... and a newly published version is read at once.
        r.hset(keys.MODEL_VERSIONS, "als", "a2")
        r.set(keys.user_cf("u2", "a2"), neighbours.encode(["Z"], [1.0]))
        switched = get(client, user_id="u2", k=2)
        assert switched["model_versions"]["als"] == "a2"
        assert [i["item_id"] for i in switched["items"]][0] == "Z"
