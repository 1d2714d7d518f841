"""The ingest API against a real broker, PostgreSQL and Redis: acks, every refusal, catalogue."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import psycopg
import pytest
import redis
from pydantic import ValidationError

from reco import keys
from reco.events import ID_REASON, MAX_CONTEXT_DEPTH, Event
from reco.settings import Settings
from reco.stack.health import free_port
from serving import catalogue
from serving.ingest import create_app
from tests.api.conftest import out_of_memory
from tests.realtime.conftest import end_offsets, read_topic

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
EVENT_ID = "6f1c2f36-3b43-4d47-9a51-4f6f3c1b8a01"


def event(**fields: object) -> dict:
    return {"user_id": "u1", "item_id": "i1", "event_type": "view", **fields}


def raw_timestamp(text: bytes) -> bytes:
    """An event body whose timestamp is raw JSON (orjson cannot write 1e400 or NaN)."""
    return b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": %s}' % text


FORMS = ("must be an RFC 3339 date-time with an offset (2026-01-02T03:04:05Z) "
         "or epoch milliseconds")


async def test_single_event_is_published_after_ack(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    body = event(event_id="6f1c2f36-3b43-4d47-9a51-4f6f3c1b8a01", timestamp=NOW_MS,
                 session_id="s1", context={"device": "ios"})
    response = await ingest.post("/events", json=body)
    assert response.status_code == 202
    assert response.json() == {"event_id": "6f1c2f36-3b43-4d47-9a51-4f6f3c1b8a01"}

    [record] = await read_topic(settings, settings.topic_events, 1)
    assert record.key == b"u1"
    assert Event.from_json_bytes(record.value) == Event.model_validate(body)


async def test_server_assigns_ids_and_batch_keeps_order(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    batch = [event(item_id=f"i{n}", timestamp=NOW_MS + n) for n in range(5)]
    response = await ingest.post("/events/batch", json={"events": batch})
    assert response.status_code == 202
    ids = response.json()["event_ids"]
    assert len(set(ids)) == 5 and all(uuid.UUID(i).version == 4 for i in ids)

    assert (await ingest.post("/events", json=event(item_id="single"))).status_code == 202

    records = await read_topic(settings, settings.topic_events, 6)
    # one user: one partition (batches and single events agree on it), in order
    assert len({r.partition for r in records}) == 1 and {r.key for r in records} == {b"u1"}
    got = [Event.from_json_bytes(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert [str(e.event_id) for e in got[:5]] == ids
    assert [e.item_id for e in got] == [f"i{n}" for n in range(5)] + ["single"]


async def test_batch_spreads_users_over_partitions(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    batch = [event(user_id=f"user-{n % 40}", item_id=f"i{n}") for n in range(400)]
    response = await ingest.post("/events/batch", json={"events": batch})
    assert response.status_code == 202
    records = await read_topic(settings, settings.topic_events, 400)
    partition_of: dict[bytes, set[int]] = {}
    for r in records:
        partition_of.setdefault(r.key, set()).add(r.partition)
    assert len(partition_of) == 40 and all(len(p) == 1 for p in partition_of.values())
    assert {p for ps in partition_of.values() for p in ps} == {0, 1, 2}
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    for user in partition_of:
        items = [Event.from_json_bytes(r.value).item_id for r in ordered if r.key == user]
        assert items == [e["item_id"] for e in batch if e["user_id"].encode() == user]


@pytest.mark.parametrize(("body", "field", "reason"), [
    (b'{"user_id": "u1", ', "body", "Invalid JSON: EOF while parsing a value at line 1 column 18"),
    (b"[1, 2]", "body", "Input should be an object"),
    (orjson.dumps(event(user_id=123)), "user_id", "Input should be a valid string"),
    (orjson.dumps(event(event_type="like")), "event_type",
     "Input should be 'view', 'click', 'cart' or 'purchase'"),
    (orjson.dumps(event(item_id="")), "item_id", "String should have at least 1 character"),
    (orjson.dumps(event(item_id="x" * 129)), "item_id",
     "String should have at most 128 characters"),
    (orjson.dumps(event(user_id="a b")), "user_id", ID_REASON),
    (orjson.dumps(event(item_id="\u00e9t\u00e9")), "item_id", ID_REASON),  # ASCII only
    # A day ahead: parameters are built at collection, possibly many minutes before the test.
    (orjson.dumps(event(timestamp=NOW_MS + 86_400_000)), "timestamp",
     "is more than 300 seconds in the future"),
    (orjson.dumps(event(timestamp="yesterday")), "timestamp", FORMS),
    (orjson.dumps(event(timestamp="2026-01-02")), "timestamp", FORMS),  # a date alone
    (orjson.dumps(event(timestamp="2026-01-02T03:04:05")), "timestamp", FORMS),  # no offset
    (orjson.dumps(event(timestamp="20260102T030405Z")), "timestamp", FORMS),  # compact
    (raw_timestamp(b"1e400"), "timestamp", "must be a finite number of epoch milliseconds"),
    (raw_timestamp(b"-1e400"), "timestamp", "must be a finite number of epoch milliseconds"),
    (raw_timestamp(b"NaN"), "timestamp", "must be a finite number of epoch milliseconds"),
    (orjson.dumps(event(timestamp=300_000_000_000_000_000)), "timestamp",
     "must be at most 253402300799999 (9999-12-31T23:59:59.999Z)"),
    # Epoch seconds: taken as milliseconds, January 1970, counting for nothing.
    (orjson.dumps(event(timestamp=1_790_000_000)), "timestamp",
     "must be at least 100000000000 (1973-03-03T09:46:40Z): a smaller number is epoch "
     "seconds, and milliseconds are expected"),
    (raw_timestamp(b"-5"), "timestamp", "must not be negative"),
    # int() of it is 0: it was accepted, and published as 1970-01-01.
    (raw_timestamp(b"-0.5"), "timestamp", "must not be negative"),
    # The same floor for dates: README says "from 1973 on".
    (orjson.dumps(event(timestamp="1972-06-01T00:00:00+00:00")), "timestamp",
     "must be at or after 1973-03-03T09:46:40Z"),
    (orjson.dumps(event(timestamp="1969-12-31T23:59:59Z")), "timestamp",
     "must be at or after 1973-03-03T09:46:40Z"),
    # JSON has no NaN: published, it became null.
    (b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "context": {"a": [1, NaN]}}',
     "context", "numbers must be finite (NaN and Infinity are not JSON)"),
    (orjson.dumps(event(context={"pad": "x" * 5000})), "context",
     "must be at most 4096 bytes as JSON, got 5010"),
    (orjson.dumps(event(event_id="not-a-uuid")), "event_id",
     "Input should be a valid UUID, invalid character: found `n` at 0"),
    (orjson.dumps({"user_id": "u1", "event_type": "view"}), "item_id", "Field required"),
    (orjson.dumps(event(price=3)), "price", "Extra inputs are not permitted"),
])
async def test_bad_event_is_422_naming_field_and_reason(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict,
    body: bytes, field: str, reason: str,
) -> None:
    response = await ingest.post("/events", content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["field"], error["reason"]) == (field, reason)
    assert await end_offsets(settings, settings.topic_events) == 0


async def test_batch_is_validated_as_a_whole(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    batch = [event(), event(event_type="like"), event(), event(user_id=""), event()]
    response = await ingest.post("/events/batch", json={"events": batch})
    assert response.status_code == 422
    assert [(e["index"], e["field"], e["reason"]) for e in response.json()["detail"]] == [
        (1, "events.event_type", "Input should be 'view', 'click', 'cart' or 'purchase'"),
        (3, "events.user_id", "String should have at least 1 character"),
    ]
    assert await end_offsets(settings, settings.topic_events) == 0  # nothing of it published


async def test_a_batch_naming_one_event_id_twice_is_refused(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    """Downstream keeps one event per id: the other would be acknowledged and then dropped."""
    same = "6f1c2a4e-8d2b-4c1e-9a7f-0b5d3e2c1a90"
    batch = [event(event_id=same), event(), event(event_id=same, item_id="other"),
             event(event_id=same.upper())]  # the same UUID, written otherwise
    response = await ingest.post("/events/batch", json={"events": batch})
    assert response.status_code == 422
    assert [(e["index"], e["field"], e["reason"]) for e in response.json()["detail"]] == [
        (2, "events.event_id", "duplicate event_id in batch"),
        (3, "events.event_id", "duplicate event_id in batch"),
    ]
    assert await end_offsets(settings, settings.topic_events) == 0


@pytest.mark.parametrize("route", ["/events", "/events/batch"])
async def test_a_deeply_nested_context_is_refused_by_name(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict, route: str
) -> None:
    """Deeper than the serializer publishing events goes, a context was a 503 that every retry
    met again; and a recursive check raised RecursionError (a 500) on the batch route, whose
    parser (orjson) takes ~1,000 levels, under 1 KB of JSON."""
    batch = route.endswith("batch")
    # (The single-event route's parser itself refuses ~200 levels, naming the body.)
    for depth, status in ((MAX_CONTEXT_DEPTH - 1, 202), (100, 422), *([(900, 422)] * batch)):
        context = b'{"a": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        event = (b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "context": '
                 + context + b"}")
        body = b'{"events": [%s]}' % event if batch else event
        response = await ingest.post(route, content=body,
                                     headers={"content-type": "application/json"})
        assert response.status_code == status, (depth, response.text)
    assert [(e["field"], e["reason"]) for e in response.json()["detail"]] == [
        ("events.context" if batch else "context",
         f"must nest at most {MAX_CONTEXT_DEPTH} levels")]
    assert await end_offsets(settings, settings.topic_events) == 1


async def test_batch_numbers_orjson_cannot_hold_are_named_like_single_events(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    body = b'{"events": [%s, %s, %s]}' % (orjson.dumps(event()), raw_timestamp(b"1e400"),
                                          raw_timestamp(b"300000000000000000000"))
    response = await ingest.post("/events/batch", content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert [(e["index"], e["field"], e["reason"]) for e in response.json()["detail"]] == [
        (1, "events.timestamp", "must be a finite number of epoch milliseconds"),
        (2, "events.timestamp", "must be at most 253402300799999 (9999-12-31T23:59:59.999Z)"),
    ]
    truly_malformed = await ingest.post("/events/batch", content=b'{"events": [1e400,]}')
    assert [e["field"] for e in truly_malformed.json()["detail"]] == ["body"]
    assert await end_offsets(settings, settings.topic_events) == 0


@pytest.mark.parametrize(("body", "reason"), [
    ({"events": [event()] * 1001}, "must hold 1 to 1000 events, got 1001"),
    ({"events": []}, "must hold 1 to 1000 events, got 0"),
    ({"events": "x"}, "required: a list of events"),
    ({"evts": []}, "unknown field"),
])
async def test_batch_shape_errors(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict, body: dict, reason: str
) -> None:
    response = await ingest.post("/events/batch", json=body)
    assert response.status_code == 422
    assert [e["reason"] for e in response.json()["detail"]] == [reason]


async def test_bodies_over_the_limit_are_413(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    big = b"x" * (settings.max_body_bytes + 1)
    declared = await ingest.post("/events", content=big)
    assert declared.status_code == 413
    assert declared.json() == {"detail": "body of 1000001 bytes is over the 1000000 byte limit"}

    async def chunks():  # no Content-Length: counted while streaming
        for _ in range(11):
            yield b"x" * 100_000

    streamed = await ingest.post("/events/batch", content=chunks())
    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "body is over the 1000000 byte limit"}
    assert await end_offsets(settings, settings.topic_events) == 0


@pytest.mark.parametrize(("headers", "detail"), [
    ({"content-encoding": "gzip"},
     "Content-Encoding 'gzip' is not supported: send the body uncompressed"),
    ({"content-type": "application/x-www-form-urlencoded"},
     "Content-Type 'application/x-www-form-urlencoded' is not supported: the body is JSON "
     "(application/json)"),
])
async def test_bodies_not_plain_json_by_their_headers_are_415(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict, headers: dict,
    detail: str,
) -> None:
    for path in ("/events", "/events/batch", "/items/i1"):
        send = ingest.put if path.startswith("/items") else ingest.post
        response = await send(path, content=b"\x1f\x8b\x08\x00", headers=headers)
        assert (response.status_code, response.json()) == (415, {"detail": detail}), path
    assert await end_offsets(settings, settings.topic_events) == 0


async def test_json_under_other_json_content_types_is_accepted(
    ingest: httpx.AsyncClient, settings: Settings, kafka_topics: dict
) -> None:
    """Browsers' sendBeacon() sends text/plain; charset=UTF-8."""
    for content_type in ("text/plain;charset=UTF-8", "application/json; charset=utf-8",
                         "application/vnd.shop+json"):
        response = await ingest.post("/events", content=orjson.dumps(event()),
                                     headers={"content-type": content_type})
        assert response.status_code == 202, (content_type, response.text)
    assert await end_offsets(settings, settings.topic_events) == 3


async def test_unreachable_broker_is_503_with_retry_after(settings: Settings) -> None:
    settings = settings.model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{free_port()}", "ingest_ack_timeout_s": 1.0,
        "pg_port": free_port()})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            one = await client.post("/events", json=event(event_id=EVENT_ID))
            batch = await client.post("/events/batch", json={"events": [event(), event()]})
            ready = await client.get("/ready")
            ready_head = await client.head("/ready")
            health = await client.get("/health")
            spec = (await client.get("/openapi.json")).json()
            item = await client.put("/items/i1", json={"category": "shoes"})
    for response in (one, batch):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["detail"] == (
            "broker not connected; some events may have been published: retry with these "
            "event_ids so that none is counted twice")
    # The ids to retry with, the server's where the client sent none (a retry with fresh
    # ones would count the events already published twice).
    assert one.json()["event_ids"] == [EVENT_ID]
    ids = batch.json()["event_ids"]
    assert len(set(ids)) == 2 and all(uuid.UUID(i).version == 4 for i in ids)
    assert ready.status_code == 503 and ready.json() == {
        "broker": False, "topic": False, "database": False}
    assert ready_head.status_code == 503 and ready_head.headers["retry-after"] == "5"
    assert health.status_code == 200
    # The 503 is documented with its body and header.
    documented = spec["paths"]["/ready"]["get"]["responses"]["503"]
    assert set(documented["content"]["application/json"]["schema"]["required"]) == set(
        ready.json())
    assert "Retry-After" in documented["headers"]
    assert item.status_code == 503 and item.headers["retry-after"] == "5"


async def _silent_listener() -> tuple[asyncio.Server, int]:
    """A server that accepts connections and never answers: a hung PostgreSQL or Redis."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_hung_redis_makes_item_writes_503_with_retry_after(
    settings: Settings, pg: psycopg.Connection
) -> None:
    """The Redis client's own TimeoutError is not the builtin one: it was a 500, which clients
    do not retry, leaving PostgreSQL's change unmirrored."""
    server, port = await _silent_listener()
    hung = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"
                                                    "?socket_timeout=1"})
    app = create_app(hung)
    async with server, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            put = await client.put("/items/i1", json={"category": "shoes"})
            patch = await client.patch("/items/i1", json={"price": 3})
    for response in (put, patch):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert "TimeoutError" in response.json()["detail"]
    # PostgreSQL committed before the mirror failed: the retry the 503 asks for re-mirrors it.
    assert pg.execute("SELECT category, price FROM items WHERE item_id = 'i1'").fetchone() == (
        "shoes", 3)


async def test_an_item_write_behind_a_locked_row_is_503_not_a_hanging_request(
    settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis,
) -> None:
    app = create_app(settings.model_copy(update={"ingest_pg_timeout_s": 0.5}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            assert (await client.put("/items/i1", json={"category": "a"})).status_code == 200
            with psycopg.connect(settings.database_url) as other:  # holds the row's lock
                other.execute("SELECT 1 FROM items WHERE item_id = 'i1' FOR UPDATE")
                put = await client.put("/items/i1", json={"category": "b"})
            again = await client.put("/items/i1", json={"category": "b"})
    assert put.status_code == 503 and put.headers["retry-after"] == "5", put.text
    assert again.status_code == 200
    assert pg.execute("SELECT category FROM items WHERE item_id = 'i1'").fetchone() == ("b",)


async def test_readiness_probes_answer_within_their_timeout_while_postgres_hangs(
    settings: Settings, kafka_topics: dict,
) -> None:
    """Each probe waited for the pool's 5 s connect timeout behind the one before it: three
    probes took 15 s, and a load balancer's probe timeout marked every replica down."""
    server, port = await _silent_listener()
    app = create_app(settings.model_copy(update={"pg_port": port}))
    async with server, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            started = time.monotonic()
            probes = await asyncio.gather(*(client.get("/ready") for _ in range(3)))
            took = time.monotonic() - started
    assert [(p.status_code, p.json()) for p in probes] == [
        (200, {"broker": True, "topic": True, "database": False})] * 3
    assert took < 9.0  # each within its own 2 s; it was 15 s (5 s each, in turn)


async def test_a_missing_events_topic_makes_the_replica_not_ready(
    settings: Settings, pg: psycopg.Connection, kafka_topics: dict
) -> None:
    """The broker answers but the events topic is not there (deleted, or not created yet, and
    the broker creates none by itself): every event waited for its ack timeout and got a 503
    while /ready said 200, so a balancer kept sending them."""
    app = create_app(settings.model_copy(update={"topic_events": f"missing-{uuid.uuid4().hex}"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            ready = await client.get("/ready")
    assert (ready.status_code, ready.json()) == (503, {
        "broker": True, "topic": False, "database": True})
    assert ready.headers["retry-after"] == "5"


async def test_an_event_over_the_message_size_is_413_not_503(
    settings: Settings, kafka_topics: dict
) -> None:
    """With the context limit raised past the producer's message size, the broker's refusal is
    final: 413 (a 503 had clients retry it forever), with the id it was sent with."""
    settings = settings.model_copy(update={"max_context_bytes": 2_000_000,
                                           "max_body_bytes": 3_000_000})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post("/events", json=event(
                event_id=EVENT_ID, context={"pad": "x" * 1_100_000}))
    assert response.status_code == 413
    assert response.json() == {
        "detail": "an event is over the broker's message size limit: Unable to produce "
                  "message: Broker: Message size too large; the events before it may have "
                  "been published with these event_ids",
        "event_ids": [EVENT_ID]}
    assert await end_offsets(settings, settings.topic_events) == 0


async def test_catalogue_upserts_postgres_and_redis(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, redis_client: redis.Redis,
    settings: Settings, kafka_topics: dict,
) -> None:
    created = 1_790_000_000_000
    put = await ingest.put("/items/i1", json={
        "title": "Trail shoe", "category": "shoes", "price": 89.9, "in_stock": True,
        "attributes": {"brand": "acme"}, "created_at": created})
    assert put.status_code == 200 and put.json() == {"item_id": "i1"}
    batch = await ingest.post("/items/batch", json={"items": [
        {"item_id": "i1", "title": "Trail shoe 2", "category": "shoes", "in_stock": False},
        {"item_id": "i2", "category": "socks", "price": 5},
    ]})
    assert batch.status_code == 200 and batch.json() == {"item_ids": ["i1", "i2"]}

    rows = pg.execute("SELECT item_id, title, category, price::float, in_stock, attributes, "
                      "extract(epoch FROM created_at)::float FROM items ORDER BY 1").fetchall()
    i2_created = rows[1][6]
    assert rows == [
        ("i1", "Trail shoe 2", "shoes", None, False, {}, created / 1000),  # created_at kept
        ("i2", None, "socks", 5.0, True, {}, i2_created),
    ]
    assert abs(i2_created - time.time()) < 600
    revisions = dict(pg.execute("SELECT item_id, revision::text FROM items").fetchall())
    assert redis_client.hgetall(keys.item_meta("i1")) == {
        "title": "Trail shoe 2", "category": "shoes", "in_stock": "0",
        "created_at": repr(created / 1000), "revision": revisions["i1"]}
    assert redis_client.hgetall(keys.item_meta("i2")) == {
        "category": "socks", "price": "5.00", "in_stock": "1", "created_at": repr(i2_created),
        "revision": revisions["i2"]}


@pytest.mark.parametrize(("created_at", "reason"), [
    # Epoch seconds were stored as January 1970: an item launched today was never "new".
    (1_795_836_951, "must be at least 100000000000 (1973-03-03T09:46:40Z): a smaller number is "
                    "epoch seconds, and milliseconds are expected"),
    # A number in a string, a time without an offset and a bare date were each read their own way.
    ("1795836951", "must be an RFC 3339 date-time with an offset (2026-01-02T03:04:05Z) or "
                   "epoch milliseconds"),
    ("2026-11-01T10:00:00", "must be an RFC 3339 date-time with an offset "
                            "(2026-01-02T03:04:05Z) or epoch milliseconds"),
    # A typo in the year led every new visitor's new arrivals until that year.
    ("9999-01-01T00:00:00Z", "is more than 300 seconds in the future"),
])
async def test_item_created_at_follows_the_event_timestamp_rules(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, kafka_topics: dict, created_at: object,
    reason: str,
) -> None:
    put = await ingest.put("/items/i1", json={"created_at": created_at})
    patch = await ingest.patch("/items/i1", json={"created_at": created_at})
    assert (put.status_code, patch.status_code) == (422, 422)
    assert [(e["field"], e["reason"]) for e in put.json()["detail"]] == [("created_at", reason)]
    assert [(e["field"], e["reason"]) for e in patch.json()["detail"]] == [("created_at", reason)]
    assert pg.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_item_created_at_takes_the_apis_future_skew_setting() -> None:
    """As events do (RECO_MAX_FUTURE_SKEW_S): an item dated 20 minutes ahead is refused at the
    default 300 s and taken with 3600 s."""
    ahead = {"created_at": int((time.time() + 1200) * 1000)}
    with pytest.raises(ValidationError, match="is more than 300 seconds in the future"):
        catalogue.ItemIn.model_validate(ahead)
    item = catalogue.ItemIn.model_validate(ahead, context={"max_future_skew_s": 3600})
    assert item.created_at is not None and item.created_at.timestamp() > time.time() + 1000


async def test_a_patch_changes_only_the_fields_it_names(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, redis_client: redis.Redis,
    settings: Settings, kafka_topics: dict,
) -> None:
    """A price-only PUT put a sold-out item back on sale and wiped its title and category
    (PUT replaces the whole item); PATCH is the partial update shops expect."""
    await ingest.put("/items/i1", json={"title": "Trail shoe", "category": "shoes",
                                        "price": 89.9, "in_stock": False,
                                        "attributes": {"brand": "acme", "size": 42}})
    before = redis_client.hgetall(keys.item_meta("i1"))

    patched = await ingest.patch("/items/i1", json={"price": 49.9})
    assert (patched.status_code, patched.json()) == (200, {"item_id": "i1"})
    row = "SELECT title, category, price::float, in_stock, attributes FROM items"
    assert pg.execute(row).fetchall() == [
        ("Trail shoe", "shoes", 49.9, False, {"brand": "acme", "size": 42})]
    meta = redis_client.hgetall(keys.item_meta("i1"))
    assert meta == {**before, "price": "49.90", "revision": meta["revision"]}
    assert int(meta["revision"]) > int(before["revision"])

    # null clears a field and removes an attribute; attributes merge key by key.
    await ingest.patch("/items/i1", json={"title": None, "in_stock": True,
                                          "attributes": {"size": None, "colour": "red"}},
                       headers={"content-type": "application/merge-patch+json"})
    assert pg.execute(row).fetchall() == [
        (None, "shoes", 49.9, True, {"brand": "acme", "colour": "red"})]
    meta = redis_client.hgetall(keys.item_meta("i1"))
    assert "title" not in meta and meta["in_stock"] == "1"

    missing = await ingest.patch("/items/nope", json={"price": 1})
    assert missing.status_code == 404 and "PUT /items/{item_id} creates one" in \
        missing.json()["detail"]
    assert pg.execute("SELECT count(*) FROM items WHERE item_id = 'nope'").fetchone() == (0,)
    bad = await ingest.patch("/items/i1", json={"in_stock": None, "colour": "red"})
    assert [(e["field"], e["reason"]) for e in bad.json()["detail"]] == [
        ("in_stock", "Input should be a valid boolean"),
        ("colour", "Extra inputs are not permitted")]
    bad_id = await ingest.patch("/items/a%20b", json={})
    assert [e["field"] for e in bad_id.json()["detail"]] == ["path.item_id"]
    # Documented without defaults: a generated client sending PUT's in_stock true would put
    # a sold-out item back on sale.
    spec = (await ingest.get("/openapi.json")).json()
    body = spec["paths"]["/items/{item_id}"]["patch"]["requestBody"]["content"]
    fields = body["application/json"]["schema"]["properties"]
    assert set(fields) >= {"in_stock", "price"}
    assert not [name for name, field in fields.items() if "default" in field]


async def test_catalogue_errors(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, redis_client: redis.Redis,
    settings: Settings, kafka_topics: dict,
) -> None:
    bad_price = await ingest.put("/items/i1", json={"price": -1})
    assert bad_price.status_code == 422
    assert [(e["field"], e["reason"]) for e in bad_price.json()["detail"]] == [
        ("price", "Input should be greater than or equal to 0")]
    for body, field, reason in [
            (b'{"price": NaN}', "price", "Input should be a finite number"),
            (b'{"attributes": {"weight": Infinity}}', "attributes",
             "numbers must be finite (NaN and Infinity are not JSON)")]:
        refused = await ingest.put("/items/i1", content=body,
                                   headers={"content-type": "application/json"})
        assert refused.status_code == 422
        assert [(e["field"], e["reason"]) for e in refused.json()["detail"]] == [(field, reason)]
    slash = await ingest.put("/items/a%2Fb", json={"category": "shoes"})  # '/' is valid
    assert (slash.status_code, slash.json()) == (200, {"item_id": "a/b"})
    pg.execute("DELETE FROM items")
    bad_id = await ingest.put("/items/a%20b", json={})
    assert [(e["field"], e["reason"]) for e in bad_id.json()["detail"]] == [
        ("path.item_id", ID_REASON)]
    twice = {"items": [{"item_id": "i1"}, {"item_id": "i1"}]}
    dupes = await ingest.post("/items/batch", json=twice)
    assert dupes.status_code == 422
    assert [(e["index"], e["reason"]) for e in dupes.json()["detail"]] == [
        (1, "duplicate item_id in batch")]
    assert pg.execute("SELECT count(*) FROM items").fetchone() == (0,)


def _nested(depth: int) -> bytes:
    """`attributes` nesting `depth` levels (the object itself is the first)."""
    return b'{"a": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "BATCH"])
async def test_item_attributes_have_the_limits_of_an_event_context(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, redis_client: redis.Redis,
    settings: Settings, kafka_topics: dict, method: str,
) -> None:
    """Attributes had no bound of their own: 100 levels were stored, and the parser's limit
    (~200 levels) answered "recursion limit exceeded" for the body. Now they are held to an
    event context's 32 levels, and to 256 keys and 65,536 bytes (roomier than a context's:
    catalogues carry specifications), refused naming `attributes`."""
    assert (await ingest.put("/items/i1", json={"category": "shoes"})).status_code == 200

    def keys(n: int) -> bytes:
        return b"{" + b", ".join(b'"k%d": %d' % (i, i) for i in range(n)) + b"}"

    too_deep = f"must nest at most {MAX_CONTEXT_DEPTH} levels"
    cases = [(keys(256), 200, None), (b'{"text": "%s"}' % (b"x" * 65_000), 200, None),
             (_nested(MAX_CONTEXT_DEPTH), 200, None),
             (_nested(MAX_CONTEXT_DEPTH + 1), 422, too_deep), (_nested(100), 422, too_deep),
             (keys(257), 422, "must have at most 256 keys"),
             (b'{"text": "%s"}' % (b"x" * 65_536), 422,
              "must be at most 65536 bytes as JSON, got 65547")]
    for attributes, status, reason in cases:
        if method == "PATCH":  # each case on its own: merged, they would be over the limits
            await ingest.put("/items/i1", json={"category": "shoes"})
        if method == "BATCH":
            response = await ingest.post("/items/batch", content=b'{"items": [{"item_id": "i1", '
                                         b'"attributes": %s}]}' % attributes)
        else:
            response = await ingest.request(method, "/items/i1",
                                             content=b'{"attributes": %s}' % attributes)
        assert response.status_code == status, (attributes[:40], response.text)
        if reason is not None:
            assert [(e["field"], e["reason"]) for e in response.json()["detail"]] == [
                ("items.attributes" if method == "BATCH" else "attributes", reason)]
    stored = pg.execute("SELECT attributes FROM items WHERE item_id = 'i1'").fetchone()[0]
    # None refused was stored (each PATCH case started from an item without attributes).
    assert stored == ({} if method == "PATCH" else orjson.loads(_nested(MAX_CONTEXT_DEPTH)))
    if method == "PATCH":
        # Each patch within the limits, but merged over them: repeated patches grew without
        # bound. Refused, and nothing of it stored.
        assert (await ingest.patch("/items/i1", content=b'{"attributes": %s}' % keys(200))
                ).status_code == 200
        more = await ingest.patch("/items/i1", content=b'{"attributes": {"x%s": 1}}' % (
            b'": 1, "x'.join(b"%d" % i for i in range(60))))
        assert more.status_code == 422
        assert [(e["field"], e["reason"]) for e in more.json()["detail"]] == [
            ("attributes", "merged into the stored ones, they must have at most 256 keys")]
        stored = pg.execute("SELECT attributes FROM items WHERE item_id = 'i1'").fetchone()[0]
        assert len(stored) == 200 and "x0" not in stored
    # Past the parser's own limit the body is named, with the limit instead of its message.
    deep = await ingest.put("/items/i1", content=b'{"attributes": %s}' % _nested(300))
    assert [(e["field"], e["reason"]) for e in deep.json()["detail"]] == [(
        "body", f"JSON nests too deeply: objects and arrays (context, attributes) nest at most "
                f"{MAX_CONTEXT_DEPTH} levels")]


async def test_health_ready_metrics(
    ingest: httpx.AsyncClient, pg: psycopg.Connection, settings: Settings, kafka_topics: dict
) -> None:
    assert (await ingest.get("/health")).json() == {"status": "ok"}
    ready = await ingest.get("/ready")
    assert ready.status_code == 200 and ready.json() == {
        "broker": True, "topic": True, "database": True}
    for path in ("/health", "/ready", "/metrics"):  # uptime monitors probe with HEAD
        head = await ingest.head(path)
        assert (head.status_code, head.content) == (200, b""), path
    # PostgreSQL down: events are still acknowledged, so still ready (catalogue writes 503).
    no_database = create_app(settings.model_copy(update={"pg_port": free_port()}))
    async with no_database.router.lifespan_context(no_database):
        transport = httpx.ASGITransport(app=no_database)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            degraded = await client.get("/ready")
            accepted = await client.post("/events", json=event())
            item = await client.put("/items/i1", json={"category": "shoes"})
    assert (degraded.status_code, degraded.json()) == (200, {
        "broker": True, "topic": True, "database": False})
    assert (accepted.status_code, item.status_code) == (202, 503)

    def counts() -> tuple[float, float]:
        return (_sample(metrics.text, 'events_ingested_total{event_type="purchase"}'),
                _sample(metrics.text, "kafka_messages_published_total"))

    metrics = await ingest.get("/metrics")
    before = counts()
    await ingest.post("/events/batch", json={"events": [event(event_type="purchase")] * 3})
    metrics = await ingest.get("/metrics")
    assert counts() == (before[0] + 3, before[1] + 3)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_hot_event_routes_count_like_framework_routes(
    ingest: httpx.AsyncClient, kafka_topics: dict
) -> None:
    """POST /events and /events/batch skip FastAPI (serving/hot_routes.py): their requests and
    refusals are still counted under their route, and other methods still get the router."""

    def requests(text: str, route: str, status: int) -> float:
        return _sample(text, f'http_requests_total{{method="POST",route="{route}",'
                             f'status="{status}"}}')

    def rejected(text: str) -> float:
        return _sample(text, 'ingest_requests_rejected_total{status="422"}')

    before = (await ingest.get("/metrics")).text
    assert (await ingest.post("/events", json=event())).status_code == 202
    assert (await ingest.post("/events", json=event(event_type="like"))).status_code == 422
    assert (await ingest.post("/events/batch", json={"events": [event()]})).status_code == 202
    after = (await ingest.get("/metrics")).text
    assert requests(after, "/events", 202) == requests(before, "/events", 202) + 1
    assert requests(after, "/events", 422) == requests(before, "/events", 422) + 1
    assert requests(after, "/events/batch", 202) == requests(before, "/events/batch", 202) + 1
    assert rejected(after) == rejected(before) + 1
    assert (await ingest.get("/events")).status_code == 405
    assert (await ingest.put("/events/batch", json={})).status_code == 405


async def test_listed_origins_may_post_events_from_a_page(settings: Settings,
                                                          kafka_topics: dict) -> None:
    """A shop's page sending events itself: the JSON body and the API key need a preflight."""
    app = create_app(settings.model_copy(update={"cors_origins": ["https://shop.example"]}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            preflight = await client.options("/events", headers={
                "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key"})
            posted = await client.post("/events", headers={"Origin": "https://shop.example"},
                                       json={"user_id": "u1", "item_id": "i1",
                                             "event_type": "view"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    assert posted.status_code == 202
    assert posted.headers["access-control-allow-origin"] == "https://shop.example"


async def test_a_body_that_trickles_in_gets_a_408(settings: Settings, kafka_topics: dict) -> None:
    """Clients trickling a body held their connection, and its memory, for as long as they
    liked."""
    app = create_app(settings.model_copy(update={"body_read_timeout_s": 0.3}))

    async def slowly():
        yield b'{"user_id": "u1", '
        await asyncio.sleep(1.0)
        yield b'"item_id": "i1", "event_type": "view"}'

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            late = await client.post("/events", content=slowly(),
                                     headers={"content-type": "application/json"})
    assert late.status_code == 408
    assert late.json() == {"detail": "body not received within 0.3 s "
                                     "(RECO_BODY_READ_TIMEOUT_S); 18 bytes came"}
    assert await end_offsets(settings, settings.topic_events) == 0


async def test_catalogue_writes_redis_refused_are_mirrored_once_it_takes_writes(
    settings: Settings, pg: psycopg.Connection, redis_client: redis.Redis, kafka_topics: dict
) -> None:
    """PostgreSQL stored the write and Redis refused it (503, retry): a client that never
    retried left a new item unserved, or a sold-out one on sale, until its next write."""
    app = create_app(settings)
    app.state.catalogue.owed.retry_s = 0.2
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            assert (await client.put("/items/old", json={"category": "c1"})).status_code == 200
            with out_of_memory(redis_client):
                new = await client.put("/items/new", json={"category": "hats"})
                sold_out = await client.patch("/items/old", json={"in_stock": False})
                await asyncio.sleep(0.6)  # retries refused meanwhile
                assert not redis_client.exists(keys.item_meta("new"))
                owed = _sample((await client.get("/metrics")).text, "catalogue_mirrors_owed")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not redis_client.exists(keys.item_meta("new")):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # the gauge is set after the mirror
            after = _sample((await client.get("/metrics")).text, "catalogue_mirrors_owed")
    assert (new.status_code, sold_out.status_code) == (503, 503)
    assert pg.execute("SELECT item_id, in_stock FROM items ORDER BY item_id").fetchall() == [
        ("new", True), ("old", False)]
    assert redis_client.hget(keys.item_meta("new"), "category") == "hats"
    assert redis_client.hget(keys.item_meta("old"), "in_stock") == "0"
    assert redis_client.smembers(keys.ITEM_IDS) == {"new", "old"}
    assert (owed, after) == (2, 0)
