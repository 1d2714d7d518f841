"""What the API may serve: catalogue items only, k filled with new arrivals, and a strategy
that says what was served (real Redis)."""

from __future__ import annotations

import time

import orjson

from reco import keys
from serving.reco_service import RecoParams
from tests.api.conftest import OLD, put_meta, put_recent
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


def put_many(r, items: dict[str, tuple[str, float]]) -> None:
    """Catalogue records `item -> (category, created_at)` in one pipeline (in stock, price 10)."""
    pipe = r.pipeline(transaction=False)
    for item, (category, created_at) in items.items():
        pipe.hset(keys.item_meta(item), mapping={"category": category, "price": 10.0,
                                                 "in_stock": "1", "created_at": created_at})
    pipe.sadd(keys.ITEM_IDS, *items)
    pipe.execute()


def test_new_arrivals_keep_the_category_cap_when_the_newest_share_one_category(
        redis_client, make_client) -> None:
    """A shop whose 1,100 newest items are all shoes, and nobody interacted with anything: the
    cap (5 of k=10 at share 0.5) was applied to the newest 1,024 only, all shoes, so the other
    categories never reached the list and it was all shoes."""
    now = time.time()
    put_many(redis_client, {f"shoe{n:04}": ("shoes", now - n) for n in range(1100)})
    put_many(redis_client, {f"o{n}": (f"other{n}", now - 86_400 - n) for n in range(30)})
    with make_client() as client:
        page = get(client, user_id="nobody", k=10)
    newest_shoes = [f"shoe{n:04}" for n in range(5)]
    assert item_ids(page) == [*newest_shoes, "o0", "o1", "o2", "o3", "o4"]


def test_unscored_items_come_newest_first_under_the_category_cap(
        redis_client, make_client) -> None:
    """u2's lists give 80 scored shoes, more than the head the cap looks at (4k+32 = 72):
    past the 5 shoes the cap allows, the unscored new arrivals filled the list in row order
    (the order the catalogue was read in), not newest first."""
    r, now = redis_client, time.time()
    put_many(r, {f"b{n:02}": ("shoes", OLD) for n in range(80)} | {"src1": ("shoes", OLD),
                                                                   "src2": ("shoes", OLD)})
    put_many(r, {f"new{n:02}": (f"cat{n}", now - 3600 * (n + 1)) for n in range(20)})
    put_recent(r, "u2", [("src1", now - 60), ("src2", now - 120)])
    r.zadd(keys.co_view("src1"), {f"b{n:02}": 100.0 - n for n in range(40)})
    r.zadd(keys.co_view("src2"), {f"b{n:02}": 100.0 - n for n in range(40, 80)})
    with make_client() as client:
        page = get(client, user_id="u2", k=10)
    assert item_ids(page) == [*[f"b{n:02}" for n in range(5)],
                              *[f"new{n:02}" for n in range(5)]]
