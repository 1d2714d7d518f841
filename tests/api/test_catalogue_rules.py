"""What the API may serve: catalogue items only, k filled with new arrivals, and a strategy
that says what was served (real Redis)."""

from __future__ import annotations

import time

import orjson

from reco import keys
from serving.reco_service import RecoParams
from tests.api.conftest import put_meta
from tests.api.test_recommendations import get

BOT = "<img/src=x/onerror=alert(1)>"


def item_ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_items_outside_the_catalogue_are_never_served(world, make_client) -> None:
    """Ids seen only in events (a bot's made-up id, a retired SKU) had popularity and were
    served by every route as in-stock items without a category."""
    r = world["redis"]
    r.zadd(keys.ITEM_POPULARITY, {BOT: 1000.0, "gone-0": 500.0})
    r.zadd(keys.co_view("A"), {"gone-0": 9.0, "gone-1": 8.0})
    r.zadd(keys.co_view("gone-0"), {"gone-1": 5.0, "X": 1.0})
    outside = {BOT, "gone-0", "gone-1"}
    with make_client() as client:
        answers = [
            client.get("/popular", params={"k": 100}).json(),
            get(client, user_id="newvisitor", k=100),
            get(client, user_id="u1", k=100),
            client.get("/items/A/similar", params={"k": 100}).json(),
            client.get("/items/gone-0/similar", params={"k": 100}).json(),
        ]
        fallback = client.app.state.service.fallback
    for body in answers:
        assert not outside & set(item_ids(body)), body
    assert item_ids(answers[4]) == ["X"]
    # The fallback (Redis down) ranks the same in-process index.
    assert not outside & set(item_ids(orjson.loads(fallback(RecoParams("u9", k=100)).body)))
    # A deployment without a catalogue of its own may allow them (RECO_CATALOGUE_ONLY=false).
    with make_client(catalogue_only="false") as client:
        assert item_ids(client.get("/popular", params={"k": 2}).json()) == [BOT, "gone-0"]


def test_new_arrivals_fill_k_newest_first(world, make_client) -> None:
    """Items nobody interacted with were never served and k stayed short although eligible
    items existed: after the popular ones come the newest catalogue items."""
    r = world["redis"]
    now = time.time()
    put_meta(r, "W", "shoes")
    put_meta(r, "Y", "shoes")
    for n in range(4):  # s0 newest; s3 out of stock
        put_meta(r, f"s{n}", "shoes", created_at=now - 3600 * (n + 1), in_stock=n != 3)
    put_meta(r, "s-old", "shoes")  # no popularity either, created long ago
    with make_client() as client:
        popular = client.get("/popular", params={"category": "shoes", "k": 100}).json()
        page = get(client, user_id="nobody", category="shoes", k=100)
        short = get(client, user_id="nobody", category="shoes", k=3)
        everyone = get(client, user_id="u1", k=100, explain="true")
    expected = ["W", "Y", "s0", "s1", "s2", "s-old"]
    assert item_ids(popular) == expected
    assert [i["score"] for i in popular["items"]][2:] == [0.0] * 4
    assert item_ids(page) == expected and page["strategy"] == "popular"
    assert item_ids(short) == ["W", "Y", "s0"]
    # u1 saw A and B: every other in-stock catalogue item is served, new arrivals last.
    assert set(item_ids(everyone)) == {"X", "Y", "Z", "W", "P", "s0", "s1", "s2", "s-old"}
    assert item_ids(everyone)[-4:] == ["s0", "s1", "s2", "s-old"]
    assert everyone["items"][-1]["reasons"]["because"] == "more from the catalogue"


def test_strategy_says_whether_anything_personal_was_served(world, make_client) -> None:
    """u1's lists hold X, Y, Z and W: asked for P's category, only the popular filler is
    served, which was still labelled "personalized"."""
    with make_client() as client:
        assert get(client, user_id="u1", k=3)["strategy"] == "personalized"
        only_filler = get(client, user_id="u1", category="c6", k=3)
        assert item_ids(only_filler) == ["P"] and only_filler["strategy"] == "popular"
        nothing = get(client, user_id="u1", category="nonexistent", k=3)
        assert nothing["items"] == [] and nothing["strategy"] == "popular"
        assert get(client, user_id="u1", category="c2", k=3)["strategy"] == "personalized"
