"""Both APIs' 422s in one shape (serving/errors.py), documented by one schema: the ingest API
over a real broker, PostgreSQL and Redis, the recommendation API over the same Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis

from reco.events import ID_REASON
from reco.settings import Settings
from serving import recommendations

pytestmark = pytest.mark.integration

ENTRY = {"loc", "field", "reason"}
BAD_PATH_ID = {"loc": ["path", "item_id"], "field": "path.item_id", "reason": ID_REASON}


@pytest.fixture
async def reco(settings: Settings, redis_client: redis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The recommendation API over the test's Redis database (empty: only 422s are asked)."""
    app = recommendations.create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reco") as client:
            yield client


def _entries(response: httpx.Response) -> list[dict]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    return body["detail"]


async def test_both_apis_422_entries_have_one_shape(
    ingest: httpx.AsyncClient, reco: httpx.AsyncClient, kafka_topics: dict
) -> None:
    """The same keys on both APIs; `index` only in a batch's entries."""
    hot = _entries(await reco.get("/recommendations?user_id=u&k=0"))
    assert hot == [{"loc": ["query", "k"], "field": "k",
                    "reason": "Input should be greater than or equal to 1"}]
    unknown = _entries(await reco.get("/recommendations?user_id=u&excludeSeen=false"))
    assert unknown[0]["loc"] == ["query", "excludeSeen"]
    popular = _entries(await reco.get("/popular?k=101"))  # a FastAPI route, not the hot one
    assert popular == [{"loc": ["query", "k"], "field": "k",
                        "reason": "Input should be less than or equal to 100"}]

    event = {"user_id": "u1", "item_id": "i1", "event_type": "like"}
    single = _entries(await ingest.post("/events", json=event))
    assert single == [{"loc": ["event_type"], "field": "event_type", "reason":
                       "Input should be 'view', 'click', 'cart' or 'purchase'"}]
    not_json = _entries(await ingest.post("/events", content=b"[1]"))
    assert not_json == [{"loc": ["body"], "field": "body", "reason": "Input should be an object"}]
    batch = _entries(await ingest.post("/events/batch", json={"events": [event]}))
    assert batch == [{**single[0], "loc": ["events", 0, "event_type"],
                      "field": "events.event_type", "index": 0}]

    # The same bad id in a path: the same entry from either API.
    assert _entries(await reco.get("/items/a%20b/similar")) == [BAD_PATH_ID]
    assert _entries(await ingest.put("/items/a%20b", json={})) == [BAD_PATH_ID]
    for entry in (*hot, *unknown, *popular, *single, *not_json):
        assert set(entry) == ENTRY, entry
    assert set(batch[0]) == ENTRY | {"index"}


def _schemas_422(spec: dict) -> dict[str, dict]:
    return {f"{method.upper()} {path}": answers["422"]["content"]["application/json"]["schema"]
            for path, operations in spec["paths"].items()
            for method, op in operations.items() if "422" in (answers := op["responses"])}


async def test_both_apis_document_one_422_schema(
    ingest: httpx.AsyncClient, reco: httpx.AsyncClient, kafka_topics: dict
) -> None:
    specs = [(await api.get("/openapi.json")).json() for api in (ingest, reco)]
    documented = {**_schemas_422(specs[0]), **_schemas_422(specs[1])}
    assert {"POST /events", "POST /events/batch", "PUT /items/{item_id}",
            "GET /recommendations", "GET /popular", "GET /items/{item_id}/similar"
            } <= set(documented)
    schemas = {orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in documented.values()}
    assert len(schemas) == 1, documented  # FastAPI's default (HTTPValidationError) nowhere
    entry = documented["GET /recommendations"]["properties"]["detail"]["items"]
    assert entry["required"] == ["loc", "field", "reason"]
    assert set(entry["properties"]) == ENTRY | {"index"}
