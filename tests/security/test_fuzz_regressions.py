"""What the fuzz tests found, kept as plain regression tests (each was an HTTP 500)."""

from __future__ import annotations

import psycopg
import pytest

from reco.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("item", "field", "reason"), [
    ({"title": "a\x00b"}, "title", "must not contain NUL characters"),
    ({"category": "\x00"}, "category", "must not contain NUL characters"),
    ({"attributes": {"colour": "re\x00d"}}, "attributes", "must not contain NUL characters"),
    ({"attributes": {"k\x00": 1}}, "attributes", "must not contain NUL characters"),
    ({"attributes": {"sizes": [1, {"eu": 2**64}]}}, "attributes",
     "integers must fit in 64 bits"),
    # Below the old bound (< 1e10) but rounded to 10**10 by numeric(12, 2): a 500 before.
    ({"price": 9_999_999_999.995}, "price", "Input should be less than or equal to 9999999999.99"),
    ({"created_at": 1e300}, "created_at",
     "must be at most 253402300799999 (9999-12-31T23:59:59.999Z)"),
    ({"created_at": -1e20}, "created_at", "must not be negative"),
    # Representable with its offset, not in UTC (PostgreSQL's driver converts it).
    ({"created_at": "0001-01-01T00:00:00+01:00"}, "created_at",
     "must be at or after 1973-03-03T09:46:40Z"),
    ({"created_at": "9999-12-31T23:30:00-01:00"}, "created_at",
     "must be at most 253402300799999 (9999-12-31T23:59:59.999Z)"),
])
async def test_unstorable_catalogue_fields_are_422(
    settings: Settings, ingest_client, pg: psycopg.Connection, redis_client, kafka_topics,
    item: dict, field: str, reason: str,
) -> None:
    async with ingest_client(settings) as client:
        one = await client.put("/items/i1", json=item)
        batch = await client.post("/items/batch", json={"items": [
            {"item_id": "ok"}, {"item_id": "i2", **item}]})
        fine = await client.put("/items/i3", json={"attributes": {"n": 2**64 - 1, "m": -(2**63)},
                                                   "price": 9_999_999_999.99})
    assert one.status_code == 422
    assert [(e["field"], e["reason"]) for e in one.json()["detail"]] == [(field, reason)]
    assert batch.status_code == 422
    assert [(e["field"], e["reason"], e["index"]) for e in batch.json()["detail"]] == [
        (f"items.{field}", reason, 1)]
    assert fine.status_code == 200  # the 64-bit range itself is stored
    assert pg.execute("SELECT item_id, attributes->>'n' FROM items").fetchall() == [
        ("i3", str(2**64 - 1))]


async def test_metrics_are_documented_as_text(settings: Settings, ingest_client,
                                              kafka_topics, redis_client) -> None:
    async with ingest_client(settings) as client:
        spec = (await client.get("/openapi.json")).json()
        metrics = await client.get("/metrics")
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"]
    assert metrics.headers["content-type"].startswith("text/plain")
