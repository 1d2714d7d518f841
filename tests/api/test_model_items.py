"""Users' lists mapped to rows through their model's item numbers (serving/model_items.py)."""

from __future__ import annotations

import time

import numpy as np
import orjson

from reco import keys, neighbours
from reco.catalog import ItemIndex
from serving.model_items import map_model_items
from tests.api.test_recommendations import W_POP, assert_ranking, get


def test_take_maps_numbers_and_refuses_what_the_mapping_cannot_vouch_for() -> None:
    items = ItemIndex.build({"a": {}, "b": {}, "c": {}})
    mapped = map_model_items("v1", ["c", "zz", "a"], items)
    assert mapped.rows.tolist() == [2, -1, 0]
    assert mapped.take(np.array([2, 0]), items).tolist() == [0, 2]
    assert mapped.take(np.array([], dtype=np.int64), items).tolist() == []
    assert mapped.take(np.array([0, 1]), items) is None  # "zz" has no row: map its id
    assert mapped.take(np.array([3]), items) is None  # not a number of this item list
    assert mapped.take(np.array([-1]), items) is None
    assert mapped.take(np.array([0]), ItemIndex.build({"c": {}})) is None  # catalogue reloaded
    # Rows appended by a popularity refresh keep the mapping valid in the grown index, but a
    # mapping made in the grown index is not used by a request ranking with the older one.
    grown = items.with_popularity(["zz"], [1.0])
    assert mapped.take(np.array([2]), grown).tolist() == [0]
    assert map_model_items("v1", ["zz"], grown).take(np.array([0]), items) is None
    assert mapped.holds_for("v1", grown) and not mapped.holds_for("v2", grown)
    # Long item lists are mapped in chunks; the rows are those of one lookup.
    many = ItemIndex.build({f"i{n}": {} for n in range(3000)})
    ids = [f"i{n}" for n in range(2999, -1, -1)] + ["gone"]
    expected = many.rows(ids)
    expected[-1] = -1
    assert map_model_items("v1", ids, many).rows.tolist() == expected.tolist()
    assert map_model_items("v1", [], many).rows.tolist() == []


def publish_als(r, version: str, model_items: list[str], user_lists: dict) -> None:
    """An ALS version as spark_jobs/publish.py writes it: the item list, users' lists with
    ids, scores and numbers, then the switch."""
    r.set(keys.model_items("als", version), orjson.dumps(model_items))
    for user, (ids, scores, codes) in user_lists.items():
        r.set(keys.user_cf(user, version), neighbours.encode(ids, scores, codes))
    r.hset(keys.MODEL_VERSIONS, "als", version)


def test_users_lists_take_their_rows_from_the_model_item_numbers(world, make_client) -> None:
    r = world["redis"]
    publish_als(r, "a1", ["P", "W", "X", "Q"], {
        "u2": (["X", "P"], [2.0, 1.0], [2, 0]),
        # Numbers that disagree with the ids (the publisher never writes that): the ranking
        # follows the numbers, so they, not the ids, were mapped.
        "u3": (["X", "P"], [2.0, 1.0], [1, 0]),
        # Q is not in the catalogue: the list goes by ids, as one without numbers does.
        "u4": (["Q", "P"], [2.0, 1.0], [3, 0]),
    })
    with make_client(w_cf=0.5) as client:
        service = client.app.state.service
        assert service.signals.model_rows["als"].version == "a1"
        # X: cf 1, popularity .1 (.52); P: cf .5, popularity 1 (.45); then popular filler A.
        assert_ranking(get(client, user_id="u2", k=3), [
            ("X", 0.5 + W_POP * 0.1), ("P", 0.5 * 0.5 + W_POP * 1.0), ("A", W_POP * 0.5)])
        assert [i["item_id"] for i in get(client, user_id="u3", k=2)["items"]] == ["W", "P"]
        # Q is no catalogue item: never served (RECO_CATALOGUE_ONLY=auto), and the signals
        # are normalised over the eligible candidates, so P's cf is the top one.
        assert_ranking(get(client, user_id="u4", k=3), [
            ("P", 0.5 * 1.0 + W_POP * 1.0), ("A", W_POP * 0.5), ("W", W_POP * 0.4)])

        # A new version serves at once, by ids until a refresh maps its item list. u5 and u6
        # have the same list.
        publish_als(r, "a2", ["W", "X", "P"], {u: (["X", "P"], [2.0, 1.0], [0, 2])
                                               for u in ("u5", "u6")})
        assert [i["item_id"] for i in get(client, user_id="u5", k=2)["items"]] == ["X", "P"]

    # The background refresh (on the event loop, the mapping in a thread) follows switches.
    with make_client(w_cf=0.5, popular_snapshot_refresh_s=0.2) as client:
        signals = client.app.state.service.signals
        r.hset(keys.MODEL_VERSIONS, "als", "a1")
        deadline = time.monotonic() + 10
        while signals.model_rows["als"].version != "a1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert signals.model_rows["als"].version == "a1"  # started with a2: remapped
        r.hset(keys.MODEL_VERSIONS, "als", "a2")
        while signals.model_rows["als"].version != "a2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert signals.model_rows["als"].version == "a2"
        assert [i["item_id"] for i in get(client, user_id="u6", k=2)["items"]] == ["W", "P"]

        r.hdel(keys.MODEL_VERSIONS, "als")  # unpublished: the mapping goes too
        signals.refresh()
        assert "als" not in signals.model_rows

    # Items outside the catalogue are served only when the deployment allows them.
    r.hset(keys.MODEL_VERSIONS, "als", "a1")
    # (u4's answer cached above under "auto" is a miss: the setting keys the cache.)
    with make_client(w_cf=0.5, catalogue_only="false") as client:
        assert_ranking(get(client, user_id="u4", k=3), [
            ("Q", 0.5 * 1.0), ("P", 0.5 * 0.5 + W_POP * 1.0), ("A", W_POP * 0.5)])
