"""The API's other endpoints, its 422s, and degradation with Redis stopped (real Redis)."""

from __future__ import annotations

import time

import pytest

from reco import keys, neighbours, ranking
from reco.catalog import ItemIndex
from reco.events import ID_REASON, QUERY_ID_REASON
from serving import reco_openapi, snapshot_file
from tests.api.conftest import out_of_memory, put_meta
from tests.api.test_recommendations import W_POP, get, ids_scores, metric


@pytest.mark.parametrize(("path", "params", "field", "reason"), [
    ("/recommendations", {}, "user_id", "Field required"),
    ("/recommendations", {"user_id": ""}, "user_id", "String should have at least 1 character"),
    ("/recommendations", {"user_id": "a b"}, "user_id", QUERY_ID_REASON),
    ("/recommendations", {"user_id": "u\n"}, "user_id", QUERY_ID_REASON),
    ("/recommendations", {"user_id": "caf\u00e9"}, "user_id", QUERY_ID_REASON),
    ("/items/a%20b/similar", {}, "path.item_id", ID_REASON),  # as the ingest API names it
    ("/recommendations", {"user_id": "u" * 129}, "user_id",
     "String should have at most 128 characters"),
    ("/recommendations", {"user_id": "u", "k": 0}, "k",
     "Input should be greater than or equal to 1"),
    ("/recommendations", {"user_id": "u", "k": 101}, "k",
     "Input should be less than or equal to 100"),
    ("/recommendations", {"user_id": "u", "k": "ten"}, "k",
     "Input should be a valid integer, unable to parse string as an integer"),
    ("/recommendations", {"user_id": "u", "k": "\u0661\u0660"}, "k",  # Arabic-Indic 10
     "Input should be a valid integer, unable to parse string as an integer"),
    ("/popular", {"k": "\u0661\u0660"}, "k",  # the FastAPI route, for comparison
     "Input should be a valid integer, unable to parse string as an integer"),
    ("/recommendations", {"user_id": "u", "max_price": "\u0661"}, "max_price",
     "Input should be a valid number, unable to parse string as a number"),
    ("/recommendations", {"user_id": "u", "min_price": -1}, "min_price",
     "Input should be greater than or equal to 0"),
    ("/recommendations", {"user_id": "u", "max_price": "nan"}, "max_price",
     "Input should be a finite number"),
    ("/recommendations", {"user_id": "u", "min_price": 5, "max_price": 2}, "min_price",
     "must not exceed max_price (2)"),
    ("/recommendations", {"user_id": "u", "category": ""}, "category",
     "String should have at least 1 character"),
    ("/recommendations", {"user_id": "u", "explain": "maybe"}, "explain",
     "Input should be a valid boolean, unable to interpret input"),
    ("/recommendations", {"user_id": "u", "exclude_seen": "2"}, "exclude_seen",
     "Input should be a valid boolean, unable to interpret input"),
    ("/popular", {"k": 0}, "k", "Input should be greater than or equal to 1"),
    ("/items/A/similar", {"k": 101}, "k", "Input should be less than or equal to 100"),
    # The same integers on every route: pydantic alone takes "1.0" and "1_0".
    *((path, {"user_id": "u", "k": k} if path == "/recommendations" else {"k": k}, "k",
       "Input should be a valid integer, unable to parse string as an integer")
      for path in ("/recommendations", "/popular", "/items/A/similar")
      for k in ("1.0", "10.000", "1_0")),
    # Unknown and repeated parameters, and bytes that are not UTF-8, on every route.
    ("/popular", {"k": 3, "limit": 3}, "limit", "unknown parameter; known: category, k"),
    ("/items/A/similar", {"k": 3, "user_id": "u"}, "user_id", "unknown parameter; known: k"),
    ("/recommendations", {"user_id": "u", "excludeSeen": "false"}, "excludeSeen",
     "unknown parameter; known: category, exclude_seen, explain, k, max_price, min_price, "
     "user_id"),
    ("/popular", [("k", 3), ("k", 50)], "k", "given more than once"),
    ("/popular", b"category=%ff", "category", "must be UTF-8, percent-encoded"),
])
def test_bad_parameters_get_422_naming_them(client, path, params, field, reason) -> None:
    if isinstance(params, bytes):  # a query string as sent, not encoded again by the client
        response = client.get(f"{path}?{params.decode('latin-1')}")
    else:
        response = client.get(path, params=params)
    assert response.status_code == 422
    # loc as the ingest API's entries have it (tests/realtime/test_error_shape.py).
    loc = field.split(".") if field.startswith("path.") else ["query", field]
    assert response.json() == {"detail": [{"loc": loc, "field": field, "reason": reason}]}


def test_a_category_outside_the_global_top_fills_once_asked_for(world, make_client) -> None:
    """A niche category of a large catalogue has no item among the global top: its page for a
    new visitor (and the fallback) was empty. Asked for once, its own top joins the snapshot
    at the next refresh; answers ranked before that are not cached."""
    r = world["redis"]
    rare = {f"R{n}": float(n + 1) for n in range(5)}  # 1..5: below every item of the top 3

    for item in rare:
        put_meta(r, item, "rare")
    r.zadd(keys.ITEM_POPULARITY, rare)
    r.zadd(keys.category_popularity("rare"), rare)

    def page(client, user: str = "newcomer") -> tuple[list[str], bool]:
        body = client.get("/recommendations",
                          params={"user_id": user, "category": "rare", "k": 3}).json()
        assert body["strategy"] == "popular"
        return [i["item_id"] for i in body["items"]], body["cached"]

    with make_client(popular_snapshot_size=3) as client:  # the global top: P, A, W
        for _ in range(2):  # asked for: not in the snapshot yet, and that answer not cached
            first, cached = page(client)  # only the new-arrivals filler (all equally old)
            assert set(first) < set(rare) and len(first) == 3 and not cached
        client.app.state.service.signals.refresh()  # the blocking refresh
        assert page(client) == (["R4", "R3", "R2"], False)
        assert page(client) == (["R4", "R3", "R2"], True)
        popular = client.get("/popular", params={"category": "rare", "k": 2}).json()
        assert [i["item_id"] for i in popular["items"]] == ["R4", "R3"]
        # Global popularity is unchanged by it: the top 3 are still the top 3.
        assert [i["item_id"] for i in client.get("/popular", params={"k": 3}).json()["items"]
                ] == ["P", "A", "W"]
        # Categories no item has are not asked for: made-up ones cannot push "rare" out.
        signals = client.app.state.service.signals
        for n in range(signals.settings.popular_category_snapshot_max):
            client.get("/popular", params={"category": f"made-up-{n}"})
        signals.refresh()
        assert signals.categories == {"rare"}

    # The same through the refresh the server runs in the background (on the event loop).
    with make_client(popular_snapshot_size=3, popular_snapshot_refresh_s=0.2) as client:
        users = (f"visitor-{n}" for n in range(1000))
        deadline = time.monotonic() + 10
        while (got := page(client, next(users))[0]) != ["R4", "R3", "R2"] \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["R4", "R3", "R2"]


def test_popular_with_and_without_category(world, make_client) -> None:
    put_meta(world["redis"], "W", "shoes")
    put_meta(world["redis"], "Y", "shoes")
    put_meta(world["redis"], "A", "c0", in_stock=False)
    with make_client() as client:
        body = client.get("/popular", params={"k": 3}).json()
        shoes = client.get("/popular", params={"category": "shoes"}).json()
    # A (50) is out of stock; scores are relative to the most popular item P (100).
    assert body == {"category": None, "items": [{"item_id": "P", "score": 1.0},
                                                {"item_id": "W", "score": 0.4},
                                                {"item_id": "Y", "score": 0.2}]}
    assert shoes["items"] == [{"item_id": "W", "score": 0.4}, {"item_id": "Y", "score": 0.2}]


def test_similar_blends_coview_and_embeddings(world, make_client) -> None:
    put_meta(world["redis"], "Y", "c3", in_stock=False)
    world["redis"].hset(keys.MODEL_VERSIONS, mapping={"als": "a1", "sasrec": "s1"})
    with make_client() as client:
        body = client.get("/items/A/similar", params={"k": 5}).json()
    # A: co-view X 4 (max), embeddings Z .8 (max), X .4; Y is out of stock.
    # Only the model /similar reads: not ALS's nor SASRec's versions.
    assert body["item_id"] == "A" and body["model_versions"] == {"item2vec": "v1"}
    assert [(i["item_id"], i["score"]) for i in body["items"]] == [
        ("X", pytest.approx(0.4 * 1 + 0.3 * 0.5)), ("Z", pytest.approx(0.3 * 1.0))]
    unknown = client.get("/items/nobody-knows/similar")
    assert (unknown.status_code, unknown.json()["items"]) == (200, [])  # as documented


def test_similar_to_an_item_whose_id_has_a_slash(world, make_client) -> None:
    """'/' is valid in ids (events, catalogue): percent-encoded, it was decoded before routing
    and the path matched no route (404)."""
    world["redis"].zadd(keys.co_view("a/b"), {"X": 3})
    # The metrics keep the route's template, not a convertor's name.
    ok = '{method="GET",route="/items/{item_id}/similar",status="200"}'
    with make_client() as client:
        before = metric(client, "http_requests_total", ok)
        response = client.get("/items/a%2Fb/similar", params={"k": 2})
        assert response.status_code == 200, response.text
        assert response.json()["item_id"] == "a/b"
        assert [i["item_id"] for i in response.json()["items"]] == ["X"]
        assert metric(client, "http_requests_total", ok) == before + 1


def test_similar_reads_its_own_list_length_not_the_recommendations(world, make_client) -> None:
    """Recommendations read 2 entries per list here; /similar still blends up to k of them."""
    r = world["redis"]
    others = [f"S{n:02d}" for n in range(30)]
    for item in others:
        put_meta(r, item, "c9")
    r.set(keys.item_knn("A", "v1"), neighbours.encode(others, [1.0 - n / 100 for n in range(30)]))
    with make_client(reco_neighbours_n=2, reco_similar_n=25) as client:
        body = client.get("/items/A/similar", params={"k": 30}).json()
        recommended = client.get("/recommendations", params={"user_id": "u1", "k": 30}).json()
    # 25 KNN entries plus A's two co-view partners X and Y.
    assert {i["item_id"] for i in body["items"]} == set(others[:25]) | {"X", "Y"}
    # Beyond the 2 entries read, S items fill the list as catalogue items no signal scores.
    assert all(i["score"] == 0.0 for i in recommended["items"] if i["item_id"] in others[2:])
    assert {i["item_id"] for i in recommended["items"] if i["score"] > 0} & set(others) == {
        "S00", "S01"}


def test_health_ready_metrics_and_model_age(world, make_client) -> None:
    world["redis"].hset(keys.MODEL_PUBLISHED_AT, "item2vec", time.time() - 100)
    with make_client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"ready": True,
                                               "checks": {"redis": True, "snapshot": True}}
        served = ("recommendation_requests_total",
                  '{endpoint="recommendations",strategy="personalized"}')
        timed = ("recommendation_latency_seconds_count", '{endpoint="recommendations"}')
        before = metric(client, *served), metric(client, *timed)
        get(client)
        assert (metric(client, *served), metric(client, *timed)) == (before[0] + 1,
                                                                     before[1] + 1)
        assert 'recommendation_latency_seconds_bucket{endpoint="recommendations",le="0.0005"}' \
            in client.get("/metrics").text
        age = metric(client, "model_age_seconds", '{model="item2vec"}')
        assert 100 <= age < 130


def test_catalogue_reloads_when_its_version_changes(world, make_client) -> None:
    with make_client() as client:
        assert "X" in [i for i, _ in ids_scores(get(client, k=5))]
        put_meta(world["redis"], "X", "c2", in_stock=False)
        world["redis"].incr(keys.ITEM_META_VERSION)
        client.app.state.service.signals.refresh()
        assert "X" not in [i for i, _ in ids_scores(get(client, k=6))]


def test_fallback_when_redis_is_down(world, make_client, redis_server) -> None:
    with make_client(reco_redis_retry_s=0.2) as client:
        fallbacks = metric(client, "recommendation_fallbacks_total", '{endpoint="recommendations"}')
        similar_fallbacks = metric(client, "recommendation_fallbacks_total",
                                   '{endpoint="similar"}')
        try:  # the session's Redis comes back even if an assertion below fails
            redis_server.stop()
            body = get(client, k=3)
            similar = client.get("/items/A/similar", params={"k": 2}).json()
            ready = client.get("/ready")
        finally:
            redis_server.start()
        assert body["strategy"] == "fallback" and body["cached"] is False
        assert body["model_versions"] == {}
        # The in-process popularity snapshot, most popular first; A is not excluded (unknown).
        assert [(i, s) for i, s in ids_scores(body)] == [
            ("P", pytest.approx(W_POP)), ("A", pytest.approx(W_POP * 0.5)),
            ("W", pytest.approx(W_POP * 0.4))]
        assert similar["strategy"] == "fallback"
        assert [i["item_id"] for i in similar["items"]] == ["P", "W"]  # not A itself
        # Serving from the snapshot: still ready (a balancer would otherwise drop every
        # replica at once), with Redis named down.
        assert (ready.status_code, ready.json()) == (
            200, {"ready": True, "checks": {"redis": False, "snapshot": True}})
        assert metric(client, "recommendation_fallbacks_total",
                      '{endpoint="recommendations"}') == fallbacks + 1
        assert metric(client, "recommendation_fallbacks_total",
                      '{endpoint="similar"}') == similar_fallbacks + 1
        time.sleep(0.3)  # past the breaker's retry time: personalised again
        assert get(client, k=3)["strategy"] == "personalized"


def test_a_start_during_a_redis_outage_serves_the_saved_snapshot(world, make_client,
                                                                 redis_server) -> None:
    """Restarted while Redis was down, the API had no snapshot: 200 with no items anywhere,
    and /ready 503 on every replica."""
    with make_client() as client:  # its first refresh saves the snapshot
        before = ids_scores(client.get("/popular", params={"k": 3}).json())
    try:
        redis_server.stop()
        with make_client(reco_redis_retry_s=0.2) as client:
            body = get(client, k=3)
            popular = client.get("/popular", params={"k": 3}).json()
            ready = client.get("/ready")
            redis_server.start()
            # Redis back, no refresh yet: ranked from the saved popular items, and not cached,
            # or the cache would serve that answer for RECO_CACHE_TTL_S after the outage.
            back = [get(client, k=3) for _ in range(2)]
            client.app.state.service.signals.refresh()
            refreshed = [get(client, k=3) for _ in range(2)]
    finally:
        redis_server.start()
    assert body["strategy"] == "fallback"
    assert [i for i, _ in ids_scores(body)] == ["P", "A", "W"]
    assert ids_scores(popular) == before and len(before) == 3
    assert (ready.status_code, ready.json()["checks"]) == (200, {"redis": False,
                                                                 "snapshot": True})
    assert [b["cached"] for b in back] == [False, False]
    assert [b["cached"] for b in refreshed] == [False, True]


def test_the_saved_snapshot_keeps_made_up_ids_out(tmp_path) -> None:
    """It holds the popular items only: with none of them in the catalogue, it no longer
    showed that the catalogue-only rule applied, and served ids the live API refused."""
    live = ItemIndex.build({"X": {"category": "c", "created_at": "1"}},
                           [("gone", 9.0), ("bot", 5.0)])
    snapshot_file.save(tmp_path / "snap.json", live)
    loaded, _ = snapshot_file.load(tmp_path / "snap.json")
    for items in (live, loaded):
        assert not items.in_stock[items.rows(["gone", "bot"])].any()
    assert list(loaded.popularity[loaded.rows(["gone", "bot"])]) == [9.0, 5.0]


def test_refused_cache_writes_fail_neither_requests_nor_the_breaker(world, make_client) -> None:
    """Redis out of memory (noeviction) refuses the cache writes riding along with round 1 and
    the flushes, but the reads work: users keep their personalised lists."""
    def refused() -> float:
        return metric(client, "recommendation_cache_write_errors_total")

    with make_client() as client, out_of_memory(world["redis"]):
        fallbacks = metric(client, "recommendation_fallbacks_total", '{endpoint="recommendations"}')
        before = refused()
        bodies = [get(client), get(client), get(client, user_id="stranger"), get(client)]
        assert [(b["strategy"], b["cached"]) for b in bodies] == [
            ("personalized", False), ("personalized", False), ("popular", False),
            ("personalized", False)]
        deadline = time.monotonic() + 10.0
        while refused() < before + 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # the last write goes out with a flush soon after its request
        assert refused() == before + 4
        assert metric(client, "recommendation_fallbacks_total",
                      '{endpoint="recommendations"}') == fallbacks
    assert world["redis"].keys(keys.reco_cache("*")) == []


def test_health_probes_and_reads_answer_head_as_get(client) -> None:
    """Uptime monitors probe with HEAD: FastAPI's GET routes refused it (405)."""
    for path in ("/health", "/ready", "/metrics", "/popular?k=2", "/items/A/similar?k=2",
                 "/recommendations?user_id=u1"):
        response = client.head(path)
        assert response.status_code == 200, path
        assert response.content == b"", path
    assert client.head("/popular?k=0").status_code == 422  # validated like GET
    assert client.post("/health").status_code == 405


def _schema(spec: dict, path: str, status: str = "200") -> dict:
    ref = spec["paths"][path]["get"]["responses"][status]["content"]["application/json"][
        "schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_openapi_documents_bounds_answers_and_strategies(client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/recommendations", "/popular", "/items/{item_id}/similar"):
        k = next(p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "k")
        assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, 100), path
        assert "ge" not in k["schema"] and "le" not in k["schema"]
    schemas = spec["components"]["schemas"]
    strategy = schemas["Recommendations"]["properties"]["strategy"]
    assert strategy["enum"] == ["personalized", "popular", "fallback"]
    assert set(_schema(spec, "/popular")["properties"]) == {"category", "items"}
    similar = _schema(spec, "/items/{item_id}/similar")
    assert similar["properties"]["strategy"]["enum"] == ["similar", "fallback"]
    assert set(similar["properties"]) == {"item_id", "strategy", "items", "model_versions"}
    assert _schema(spec, "/health")["properties"]["status"]["const"] == "ok"
    assert _schema(spec, "/ready") == _schema(spec, "/ready", "503")
    for name in ("model_versions", "cached"):
        assert schemas["Recommendations"]["properties"][name]["description"]
    assert schemas["RecommendedItem"]["properties"]["score"]["description"]
    # The explanation's signals are the ranking's, as served (see test_explain_...).
    assert list(schemas["Signals"]["properties"]) == [*ranking.SIGNALS, "freshness"]
    assert "documentation only" not in str(spec["paths"]["/recommendations"])
    # Only /recommendations names a user a token can differ from.
    assert "403" in spec["paths"]["/recommendations"]["get"]["responses"]
    for path in ("/popular", "/items/{item_id}/similar"):
        assert "403" not in spec["paths"][path]["get"]["responses"], path


def test_documented_answers_match_served_ones(client) -> None:
    """Each route's body validates against its documented model, explanations included."""
    answers = [
        (reco_openapi.Recommendations,
         client.get("/recommendations?user_id=u1&explain=true&k=3")),
        (reco_openapi.Popular, client.get("/popular?k=2")),
        (reco_openapi.Similar, client.get("/items/A/similar?k=2")),
        (reco_openapi.Health, client.get("/health")),
        (reco_openapi.Readiness, client.get("/ready")),
    ]
    for model, response in answers:
        assert response.status_code == 200
        model.model_validate_json(response.content, strict=True)
        assert set(model.model_fields) == set(response.json())
