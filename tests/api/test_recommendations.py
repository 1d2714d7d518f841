"""GET /recommendations against real Redis: the exact ranking the formula gives, and every rule.

Expected scores are computed by hand from the `world` scenario (tests/api/conftest.py):
signals are divided by their max over the eligible candidates, weights .4/.3/.2/.1 (cf 0).
Recency: A was touched one half-life after B, so B-only candidates get exactly 0.5.
"""

from __future__ import annotations

import os
import time

import pytest

from reco import keys
from tests.api.conftest import DAY, put_meta

W_CO, W_EMB, W_POP, W_REC = 0.4, 0.3, 0.2, 0.1


def blend(coview: float, embed: float, pop: float, rec: float) -> float:
    return W_CO * coview + W_EMB * embed + W_POP * pop + W_REC * rec


# Candidates X, Y, Z, W (neighbours) and P (popular filler); A and B were seen.
# coview raw X 4, Y 2+2, Z 1 (max 4); embed X .4, Z .8, W .6 (max .8); pop max 100.
EXPECTED = {
    "X": blend(4 / 4, 0.4 / 0.8, 10 / 100, 1.0),
    "Y": blend(4 / 4, 0.0, 20 / 100, 1.0),
    "Z": blend(1 / 4, 0.8 / 0.8, 5 / 100, 1.0),
    "W": blend(0.0, 0.6 / 0.8, 40 / 100, 0.5),
    "P": blend(0.0, 0.0, 100 / 100, 0.0),
}


def get(client, **params) -> dict:
    response = client.get("/recommendations", params={"user_id": "u1", **params})
    assert response.status_code == 200, response.text
    return response.json()


def ids_scores(body: dict) -> list[tuple[str, float]]:
    return [(i["item_id"], i["score"]) for i in body["items"]]


def assert_ranking(body: dict, expected: list[tuple[str, float]]) -> None:
    assert [i for i, _ in ids_scores(body)] == [i for i, _ in expected]
    for (_, got), (_, want) in zip(ids_scores(body), expected, strict=True):
        assert got == pytest.approx(want, abs=2e-6)


def test_exact_ranking_from_the_formula(client) -> None:
    body = get(client, k=10)
    assert body["strategy"] == "personalized"
    assert body["model_versions"] == {"item2vec": "v1"}
    assert body["cached"] is False
    assert_ranking(body, sorted(EXPECTED.items(), key=lambda kv: -kv[1]))
    assert [i for i, _ in ids_scores(body)] == ["X", "Y", "Z", "W", "P"]
    assert "reasons" not in body["items"][0]


def test_k_truncates(client) -> None:
    assert [i for i, _ in ids_scores(get(client, k=2))] == ["X", "Y"]


def test_explain_gives_contributions_and_source(client) -> None:
    items = {i["item_id"]: i["reasons"] for i in get(client, explain="true")["items"]}
    assert items["X"]["signals"] == pytest.approx(
        {"coview": 0.4, "embedding": 0.15, "popularity": 0.02, "recency": 0.1, "cf": 0.0,
         "seq": 0.0, "freshness": 0.0}, abs=2e-6)
    assert items["X"]["source_item"] == "A"
    assert items["X"]["because"] == "because you viewed A"
    # Y: A gives .4*2/4 + .1 = .3, B gives .4*2/4 + .05 = .25 -> A; W only comes from B.
    assert items["Y"]["source_item"] == "A"
    assert items["W"]["source_item"] == "B"
    assert items["P"] == {"signals": pytest.approx({"coview": 0, "embedding": 0,
                                                    "popularity": 0.2, "recency": 0, "cf": 0,
                                                    "seq": 0, "freshness": 0}),
                          "source_item": None, "because": "popular right now"}


def test_exclude_seen_false_keeps_recent_items(client) -> None:
    body = get(client, exclude_seen="false", k=10)
    # A is now eligible (popularity 50, no neighbour signal); nothing else changes but B (no
    # popularity, no signal) closing the list as a catalogue item nobody else interacted with.
    assert ("A", pytest.approx(blend(0, 0, 0.5, 0), abs=2e-6)) in ids_scores(body)
    assert ids_scores(body)[-1] == ("B", 0.0)
    assert [i for i, _ in ids_scores(body)] == ["X", "Y", "Z", "W", "P", "A", "B"]


def test_items_seen_long_ago_are_excluded_too(world, make_client) -> None:
    # W and P left the 50-item recent list long ago, but the user did interact with them.
    world["redis"].zadd(keys.user_seen("u1"), {"W": 1, "P": 2, "A": 3, "B": 4})
    with make_client() as client:
        assert [i for i, _ in ids_scores(get(client))] == ["X", "Y", "Z"]
        assert [i for i, _ in ids_scores(get(client, exclude_seen="false", k=10))] == [
            "X", "Y", "Z", "W", "P", "A", "B"]


def test_only_the_newest_seen_items_are_excluded(world, make_client) -> None:
    """A miss reads at most `seen_max` seen items, the newest, whatever the set holds (one
    written under a larger setting, or by hand)."""
    world["redis"].zadd(keys.user_seen("u1"), {"W": 1, "P": 2, "A": 3, "B": 4})
    with make_client(seen_max=3) as client:  # W is the oldest: back in the ranking
        assert [i for i, _ in ids_scores(get(client, k=10))] == ["X", "Y", "Z", "W"]
    with make_client(seen_max=0) as client:  # only the recent items
        assert [i for i, _ in ids_scores(get(client, k=10))] == ["X", "Y", "Z", "W", "P"]


def test_out_of_stock_is_dropped(world, make_client) -> None:
    put_meta(world["redis"], "X", "c2", in_stock=False)
    with make_client() as client:
        body = get(client)
    assert_ranking(body, [(i, EXPECTED[i]) for i in ["Y", "Z", "W", "P"]])


def test_price_range(world, make_client) -> None:
    for n, (item, price) in enumerate({"X": 5, "Y": 15, "Z": 25, "W": 35, "P": 45}.items()):
        put_meta(world["redis"], item, f"c{n}", price=price)
    with make_client() as client:
        body = get(client, min_price=10, max_price=40)
    # Eligible Y, Z, W: coview max 4 (Y), embed max .8 (Z), popularity max 40 (W).
    assert_ranking(body, [("Y", blend(1, 0, 20 / 40, 1)), ("Z", blend(0.25, 1, 5 / 40, 1)),
                          ("W", blend(0, 0.75, 1, 0.5))])


def test_category_filter(world, make_client) -> None:
    put_meta(world["redis"], "X", "shoes")
    put_meta(world["redis"], "W", "shoes")
    with make_client() as client:
        body = get(client, category="shoes")
    # Eligible X, W: coview max 4, embed max .6, popularity max 40, recency max 1.
    assert_ranking(body, [("X", blend(1, 0.4 / 0.6, 10 / 40, 1)),
                          ("W", blend(0, 1, 1, 0.5))])
    assert get(client, category="nothing-here")["items"] == []


def test_category_diversity_caps_share_of_top_k(world, make_client) -> None:
    for item in ("X", "Y", "Z"):
        put_meta(world["redis"], item, "shoes")
    with make_client() as client:  # max_category_share .5 of k=4 -> at most 2 shoes
        assert [i for i, _ in ids_scores(get(client, k=4))] == ["X", "Y", "W", "P"]
        # k=5: cap 2; after W and P nothing else is left, so the deferred Z fills the list.
        assert [i for i, _ in ids_scores(get(client, k=5))] == ["X", "Y", "W", "P", "Z"]
    with make_client(max_category_share=1.0) as client:  # (k=3: a fresh cache variant)
        assert [i for i, _ in ids_scores(get(client, k=3))] == ["X", "Y", "Z"]


def test_freshness_boost_changes_order(world, make_client) -> None:
    put_meta(world["redis"], "W", "c5", created_at=world["now"] - DAY)
    with make_client(freshness_boost=0.6) as client:
        body = get(client, explain="true")
    boosted = dict(EXPECTED, W=EXPECTED["W"] * 1.6)  # 60% above its own score
    assert_ranking(body, sorted(boosted.items(), key=lambda kv: -kv[1]))
    assert [i for i, _ in ids_scores(body)] == ["X", "W", "Y", "Z", "P"]
    assert body["items"][1]["reasons"]["signals"]["freshness"] == pytest.approx(
        EXPECTED["W"] * 0.6)


def test_cf_candidates_once_als_is_published(world, make_client) -> None:
    from reco import neighbours

    r = world["redis"]
    r.hset(keys.MODEL_VERSIONS, "als", "a1")
    r.set(keys.user_cf("u2", "a1"), neighbours.encode(["Q", "P"], [2.0, 1.0]))
    put_meta(r, "Q", "c9")  # a catalogue item (others are never served)
    with make_client(w_cf=0.5) as client:
        body = get(client, user_id="u2", k=3)
    assert body["strategy"] == "personalized"
    assert body["model_versions"] == {"item2vec": "v1", "als": "a1"}
    # Q: cf 1, popularity 0 (.5); P: cf .5, popularity 1 (.45); then popular filler A (.1).
    assert_ranking(body, [("Q", 0.5 * 1.0), ("P", 0.5 * 0.5 + W_POP * 1.0),
                          ("A", W_POP * 0.5)])
    with make_client(w_cf=0.0) as client:  # w_cf 0: ALS's lists are not even read
        body = get(client, user_id="u2", k=3)
        assert body["strategy"] == "popular" and "Q" not in [i["item_id"] for i in body["items"]]
        assert body["model_versions"] == {}  # a popular answer names no model
        r.hset(keys.MODEL_VERSIONS, "als", "a2")  # nor is ALS's retraining a reason to re-rank
        assert get(client, user_id="u2", k=3)["cached"] is True


def test_seq_candidates_once_sasrec_is_published(world, make_client) -> None:
    from reco import neighbours

    r = world["redis"]
    r.hset(keys.MODEL_VERSIONS, mapping={"als": "a1", "sasrec": "s1"})
    r.set(keys.user_cf("u2", "a1"), neighbours.encode(["Q", "P"], [2.0, 1.0]))
    r.set(keys.user_seq("u2", "s1"), neighbours.encode(["W", "Q"], [0.6, 0.15]))
    put_meta(r, "Q", "c9")
    with make_client(w_cf=0.5, w_seq=0.3) as client:
        body = get(client, user_id="u2", k=4, explain="true")
    assert body["model_versions"] == {"item2vec": "v1", "als": "a1", "sasrec": "s1"}
    # Q: cf 1, seq .25 (.575); P: cf .5, popularity 1 (.45); W: seq 1, popularity .4 (.38);
    # then popular filler A (.1).
    assert_ranking(body, [("Q", 0.5 + 0.3 * 0.25), ("P", 0.5 * 0.5 + W_POP * 1.0),
                          ("W", 0.3 + W_POP * 0.4), ("A", W_POP * 0.5)])
    assert body["items"][0]["reasons"]["signals"]["seq"] == pytest.approx(0.075)
    # W came from SASRec alone, no recent item: the explanation says so, not "popular".
    assert body["items"][2]["reasons"]["because"] == "picked for you from your history"
    with make_client(w_cf=0.5) as client:  # w_seq 0: the SASRec list is not even read
        body = get(client, user_id="u2", k=3)
        assert [i["item_id"] for i in body["items"]] == ["Q", "P", "A"]
        # nor named as a model the answer was ranked with, nor a reason to re-rank
        assert body["model_versions"] == {"item2vec": "v1", "als": "a1"}
        r.hset(keys.MODEL_VERSIONS, "sasrec", "s2")
        assert get(client, user_id="u2", k=3)["cached"] is True


def test_unknown_user_gets_popular(client) -> None:
    body = get(client, user_id="stranger", k=3)
    assert body["strategy"] == "popular"
    assert body["model_versions"] == {}  # ranked with no model's list (item2vec v1 is live)
    assert_ranking(body, [("P", W_POP * 1.0), ("A", W_POP * 0.5), ("W", W_POP * 0.4)])


def test_cache_hit_then_miss_after_new_event(client, world) -> None:
    hits = metric(client, "recommendation_cache_hits_total")
    first = get(client)
    again = get(client)
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["items"] == first["items"]
    assert metric(client, "recommendation_cache_hits_total") == hits + 1

    hits += 1
    touch_item = "Y"  # the user looks at Y: Y becomes the head and a seen item
    from tests.api.conftest import touch

    touch(world["redis"], "u1", touch_item, time.time())
    fresh = get(client)
    assert fresh["cached"] is False
    assert "Y" not in [i["item_id"] for i in fresh["items"]]
    assert metric(client, "recommendation_cache_hits_total") == hits
    assert get(client)["cached"] is True


def test_cache_misses_when_the_head_comes_back_after_another_event(client, world) -> None:
    """A -> X -> A with no request while X was the head: the head is A again, but X is now
    seen (and a source), so the entry made before X must not be served."""
    from tests.api.conftest import touch

    assert "X" in [i["item_id"] for i in get(client)["items"]]
    touch(world["redis"], "u1", "X", time.time())
    touch(world["redis"], "u1", "A", time.time())
    fresh = get(client)
    assert fresh["cached"] is False
    assert "X" not in [i["item_id"] for i in fresh["items"]]
    assert get(client)["cached"] is True


def test_cache_misses_after_the_head_item_is_touched_again(client, world, api_settings) -> None:
    """The user views A (already the head) again, through the real processor's writes: the
    recent list is unchanged, but A's recency is not, so the entry made before is a miss."""
    import asyncio
    import uuid

    from streaming.feature_store import FeatureStore
    from streaming.messages import StreamEvent
    from streaming.redis_pipe import RedisPipe

    async def view_a_again() -> None:
        pipe = RedisPipe(api_settings.redis_url)
        try:
            event = StreamEvent(str(uuid.uuid4()), "u1", "A", "view", int(time.time() * 1000))
            assert len((await FeatureStore(pipe, api_settings).apply([event])).applied) == 1
        finally:
            await pipe.close()

    r = world["redis"]
    before = r.lrange(keys.user_recent("u1"), 0, -1)
    assert get(client)["cached"] is False and get(client)["cached"] is True
    asyncio.run(view_a_again())
    assert r.lrange(keys.user_recent("u1"), 0, -1) == before
    fresh = get(client)
    assert fresh["cached"] is False
    assert get(client)["cached"] is True


def test_cache_is_per_parameters_and_model_version(client, world) -> None:
    assert get(client, k=5)["cached"] is False
    assert get(client, k=4)["cached"] is False
    assert get(client, k=5)["cached"] is True
    world["redis"].hset(keys.MODEL_VERSIONS, "item2vec", "v2")  # switch: v2 has no lists
    body = get(client, k=5)
    assert body["cached"] is False and body["model_versions"] == {"item2vec": "v2"}
    assert world["redis"].ttl(keys.reco_cache("u1", _variant(k=5))) > 0


def test_cache_entries_ranked_with_other_weights_are_misses(world, make_client) -> None:
    """A redeploy with new weights (or a replica not yet restarted) never serves the other
    configuration's entries until their TTL: the ranking configuration keys the fingerprint."""
    with make_client() as before:
        first = get(before, k=5)
        assert get(before, k=5)["cached"] is True
    with make_client(w_pop=0.9) as after:
        body = get(after, k=5)
        assert body["cached"] is False and body["items"] != first["items"]
        after.app.state.service.store.flush_cache_writes()
        assert get(after, k=5)["cached"] is True
    with make_client() as before_again:  # and the other way round
        assert get(before_again, k=5) == first
        before_again.app.state.service.store.flush_cache_writes()
    # Another replica or a restart with the same settings hits those entries: the key is the
    # configuration's, not the process's.
    with make_client() as replica:
        assert get(replica, k=5)["cached"] is True


def test_the_ranking_key_is_the_same_in_every_process() -> None:
    """Replicas and restarts share cache entries: no per-process hash seed in the key."""
    import subprocess
    import sys

    code = ("from reco.ranking import RankConfig; from serving.reco_service import "
            "ranking_key; print(ranking_key(RankConfig(w_pop=1), 500).hex())")
    keys_seen = {subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
                 for seed in ("1", "2")}
    from reco.ranking import RankConfig
    from serving.reco_service import ranking_key

    assert keys_seen == {ranking_key(RankConfig(w_pop=1.0), 500).hex() + "\n"}
    assert ranking_key(RankConfig(w_pop=1.0), 499) != ranking_key(RankConfig(w_pop=1.0), 500)
    assert ranking_key(RankConfig(), 500, "false") != ranking_key(RankConfig(), 500, "auto")


def test_cache_entries_of_the_release_before_catalogue_stamps_do_not_mix(client, world) -> None:
    """Rolling upgrades: that release's entries ("fingerprint", versions, body) are misses here
    (re-ranked and replaced), and its check (first line == fingerprint) fails on ours."""
    from serving.reco_store import FirstRead

    body = get(client, k=5)
    assert get(client, k=5)["cached"] is True  # the entry is written
    key = keys.reco_cache("u1", _variant(k=5))
    r = world["redis"]
    head, versions, cached = r.get(key).split("\n", 2)
    fingerprint = client.app.state.service.fingerprint(
        FirstRead(None, r.lrange(keys.user_recent("u1"), 0, -1), {}))
    assert head != fingerprint and head.startswith(fingerprint + " ")
    r.set(key, "\n".join((fingerprint, versions, cached)))
    again = get(client, k=5)
    assert again["cached"] is False and again["items"] == body["items"]
    assert get(client, k=5)["cached"] is True


def test_a_cache_entry_that_does_not_parse_is_re_ranked(client, world) -> None:
    """Whatever else wrote the key: an entry whose stamp or body cannot be read after a
    catalogue change is a miss, not an error."""
    from serving.reco_store import FirstRead

    r = world["redis"]
    fingerprint = client.app.state.service.fingerprint(
        FirstRead(None, r.lrange(keys.user_recent("u1"), 0, -1), {}))
    versions = '{"item2vec":"v1"}'
    key = keys.reco_cache("u1", _variant(k=5))
    for stamp, body in (("not-json", "{}"), ('"0"', "not json"), ('"0"', '{"items": 3}')):
        r.set(key, "\n".join((f"{fingerprint} {stamp}", versions, body)))
        assert get(client, k=5)["cached"] is False
        client.app.state.service.store.flush_cache_writes()  # the re-ranked entry, now


def _variant(**params) -> str:
    from serving.reco_service import RecoParams

    return RecoParams("u1", **params).variant


def metric(client, name: str, labels: str = "") -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + labels + " ") or (labels and line.startswith(name + labels)):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
