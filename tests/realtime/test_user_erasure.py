"""A user's erasure (reco/erasure.py): the processor's part in Redis, the archiver's in
PostgreSQL, and the whole path from `DELETE /users/{id}` through a real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import orjson
import psycopg
import pytest
import redis
from aiokafka.structs import ConsumerRecord
from pydantic import SecretStr
from typer.testing import CliRunner

from reco import erasure, keys
from reco.cli import app
from reco.erasure import Erasure, Progress, Recorded
from reco.privacy import pseudonym
from reco.settings import Settings, get_settings
from streaming.archiver import Archiver
from streaming.feature_store import FeatureStore, WriteConflict
from streaming.messages import StreamErasure, StreamEvent, split_for_features
from streaming.redis_pipe import RedisPipe
from tests.realtime.conftest import Consumers, read_topic, wait_for

pytestmark = pytest.mark.integration

T_MS = int(time.time() * 1000) - 60_000
VERSIONS = {"als": "als-v1", "sasrec": "seq-v1", "item2vec": "i2v-v1"}


def ev(user: str, item: str, offset: int) -> StreamEvent:
    """An event of partition 0 at `offset` (its log time follows the offset)."""
    return StreamEvent(str(uuid.uuid4()), user, item, "view", T_MS + offset, 0, offset,
                       T_MS + offset)


def erase(user: str, offset: int) -> StreamErasure:
    return StreamErasure(str(uuid.uuid4()), user, 0, offset, T_MS + offset)


def user_state(r: redis.Redis, user: str) -> dict[str, object]:
    return {"recent": r.lrange(keys.user_recent(user), 0, -1),
            "times": sorted(r.hgetall(keys.user_recent_times(user))),
            "seen": r.zrange(keys.user_seen(user), 0, -1),
            "last": r.get(keys.user_last_event(user))}


def published_lists(r: redis.Redis, user: str) -> None:
    """The user's ALS and SASRec lists and cached answer, as publishing and the API write them."""
    r.hset(keys.MODEL_VERSIONS, mapping=VERSIONS)
    r.set(keys.user_cf(user, "als-v1"), b"[]")
    r.set(keys.user_seq(user, "seq-v1"), b"[]")
    r.set(keys.reco_cache(user), b"{}")
    r.sadd(keys.user_seen_unbounded(user), "old")


async def test_an_erasure_deletes_the_users_features_and_keeps_later_events(
    settings: Settings, redis_client: redis.Redis
) -> None:
    r = redis_client
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings, log_end=lambda p: 100)
    try:
        await store.apply([ev("u1", "a", 0), ev("u1", "b", 1), ev("u2", "a", 2)])
        published_lists(r, "u1")
        published_lists(r, "u2")
        u2_before = user_state(r, "u2")
        popularity = r.zscore(keys.ITEM_POPULARITY, "a")

        before, after = ev("u1", "c", 3), ev("u1", "d", 5)
        batch = [before, after, ev("u2", "e", 6)]
        gone = erase("u1", 4)
        applied = await store.apply(batch, [gone])

        assert applied.erased == [gone]
        assert [e.item_id for e in applied.applied] == ["d", "e"]  # c came before the erasure
        assert applied.duplicates == 0
        assert user_state(r, "u1") == {"recent": ["d"], "times": ["d"], "seen": ["d"],
                                       "last": after.event_id}
        for key in (keys.user_cf("u1", "als-v1"), keys.user_seq("u1", "seq-v1"),
                    keys.reco_cache("u1"), keys.user_seen_unbounded("u1")):
            assert not r.exists(key), key
        # Other users keep everything; aggregates keep what was counted.
        assert user_state(r, "u2")["recent"] == ["e", *u2_before["recent"]]
        assert r.exists(keys.user_cf("u2", "als-v1"), keys.user_seq("u2", "seq-v1")) == 2
        assert r.zscore(keys.ITEM_POPULARITY, "a") == popularity

        # Redelivered (the offsets were not committed): the erasure is recognised as applied by
        # the partition's position and does not erase the events after it.
        again = await store.apply(batch, [gone])
        assert again.erased == [] and again.applied == []
        assert user_state(r, "u1")["recent"] == ["d"]
    finally:
        await client.close()


async def test_an_erasure_planned_before_the_previous_batch_is_written_starts_afresh(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The overlapped loop plans batch k+1 while batch k's write is in flight: a user erased in
    k must not get the state Redis still holds from before the erasure."""
    r = redis_client
    client, writer = RedisPipe(settings.redis_url), RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings, writer, log_end=lambda p: 100)
    try:
        await store.apply([ev("u1", "a", 0), ev("u1", "b", 1)])
        first = await store.plan([], erasures=[erase("u1", 2)])
        second = await store.plan([ev("u1", "c", 3)], after=first)  # k not written yet
        await store.write(first)
        await store.write(second)
        assert user_state(r, "u1")["recent"] == ["c"]
        assert r.zrange(keys.user_seen("u1"), 0, -1) == ["c"]
    finally:
        await client.close()
        await writer.close()


async def test_a_redelivered_erasure_is_recognised_by_its_marker_where_positions_cannot(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """While the log end is unknown (a partition just revoked) positions decide nothing: the
    erasure's marker keeps a redelivery from wiping what the events after it built."""
    r = redis_client
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings)  # log end unknown
    try:
        await store.apply([ev("u1", "a", 0)])
        batch, gone = [ev("u1", "b", 2)], [erase("u1", 1)]
        await store.apply(batch, gone)
        again = await store.apply(batch, gone)
        assert again.erased == [] and again.applied == []
        assert user_state(r, "u1")["recent"] == ["b"]
    finally:
        await client.close()


async def test_erasures_and_the_events_they_drop_stay_marked_past_the_dedup_window(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A redelivery that positions cannot place (log end unknown), a day later: the event the
    erasure dropped is not applied, and neither erasure wipes what came after, though the
    events' own markers (RECO_DEDUP_TTL_S) have expired."""
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings.model_copy(update={"dedup_ttl_s": 1}))
    try:
        first, second = erase("u1", 1), erase("u1", 2)
        dropped = ev("u1", "a", 0)
        await store.apply([dropped], [first, second])
        later = ev("u1", "b", 3)
        await store.apply([later])
        await wait_for(lambda: not redis_client.exists(keys.event_seen(later.event_id)),
                       "the dedup window to pass")

        again = await store.apply([dropped], [first, second])
        assert again.erased == [] and again.applied == []
        # A copy of the first erasure sent again, after a new event: the event is the user's.
        copy = StreamErasure(first.erasure_id, "u1", 0, 5, T_MS + 5)
        await store.apply([ev("u1", "c", 4)], [copy])
        assert user_state(redis_client, "u1")["recent"] == ["c", "b"]
        assert redis_client.ttl(keys.event_seen(first.erasure_id)) > 86_400
    finally:
        await client.close()


async def test_a_redelivered_erasure_drops_the_events_before_it_again_erasing_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Met again at its own position (its marker says where it was read) past the dedup
    window, positions unable to place it: the user's event before it, applied in an earlier
    batch, is not applied again, and what came after stays."""
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings.model_copy(update={"dedup_ttl_s": 1}))
    try:
        before, gone, after = ev("u1", "a", 0), erase("u1", 1), ev("u1", "b", 2)
        await store.apply([before])
        await store.apply([], [gone])
        await store.apply([after])
        await wait_for(lambda: not redis_client.exists(keys.event_seen(before.event_id)),
                       "the dedup window to pass")
        again = await store.apply([before], [gone])
        assert again.erased == [] and again.applied == []
        assert user_state(redis_client, "u1")["recent"] == ["b"]
    finally:
        await client.close()


async def test_an_erasure_records_the_users_pseudonym_and_becomes_the_latest_event(
    settings: Settings, redis_client: redis.Redis
) -> None:
    r = redis_client
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings)
    try:
        await store.apply([ev("u1", "a", 0)])
        gone = erase("u1", 1)
        await store.apply([], [gone])
        # A cached answer's fingerprint held the old latest event: it no longer matches, even
        # for a user whose recent list had expired.
        assert r.get(keys.user_last_event("u1")) == gone.erasure_id
        key = settings.log_pseudonym_key.get_secret_value()
        assert r.zrange(keys.USER_ERASURES, 0, -1) == [
            keys.user_erasure_member(pseudonym("u1", key), gone.erasure_id)]
        assert not r.exists(keys.user_recent("u1"), keys.user_seen("u1"))
    finally:
        await client.close()


async def test_a_version_switch_between_plan_and_write_makes_the_erasure_plan_again(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A publish switching versions after the erasure read them: the new version's list of
    the user must go too."""
    r = redis_client
    published_lists(r, "u1")
    client = RedisPipe(settings.redis_url)
    store = FeatureStore(client, settings)
    try:
        planned = await store.plan([], erasures=[erase("u1", 1)])
        r.set(keys.user_cf("u1", "als-v2"), b"[]")
        r.hset(keys.MODEL_VERSIONS, "als", "als-v2")
        with pytest.raises(WriteConflict):
            await store.write(planned)
        await store.apply([], [erase("u1", 1)])
        assert not r.exists(keys.user_cf("u1", "als-v2"))
    finally:
        await client.close()


async def test_an_erasure_deletes_the_lists_of_the_version_being_published(
    settings: Settings, redis_client: redis.Redis
) -> None:
    r = redis_client
    published_lists(r, "u1")
    r.hset(keys.MODEL_PUBLISHING, "als", "als-v2")
    r.set(keys.user_cf("u1", "als-v2"), b"[]")
    client = RedisPipe(settings.redis_url)
    try:
        await FeatureStore(client, settings).apply([], [erase("u1", 1)])
        assert not r.exists(keys.user_cf("u1", "als-v1"), keys.user_cf("u1", "als-v2"))
        # A publish starting between the plan and the write makes it plan again.
        store = FeatureStore(client, settings)
        planned = await store.plan([], erasures=[erase("u1", 2)])
        r.hset(keys.MODEL_PUBLISHING, "sasrec", "seq-v2")
        with pytest.raises(WriteConflict):
            await store.write(planned)
    finally:
        await client.close()


async def test_a_copy_of_an_erasure_in_the_same_batch_drops_nothing_after_the_first(
    settings: Settings, redis_client: redis.Redis, pg: psycopg.Connection
) -> None:
    """The same erasure twice (a producer's retry) around an event: the event came after the
    erasure, and stays, in Redis and in PostgreSQL."""
    client = RedisPipe(settings.redis_url)
    try:
        first = erase("u1", 1)
        copy = msgspec.structs.replace(first, offset=3, log_ms=first.log_ms + 2)
        applied = await FeatureStore(client, settings).apply([ev("u1", "b", 2)], [first, copy])
        assert [e.item_id for e in applied.applied] == ["b"]
        assert user_state(redis_client, "u1")["recent"] == ["b"]
    finally:
        await client.close()
    archiver = Archiver(settings)
    try:
        message = erasure_record("u1", 1)
        again = ConsumerRecord("events", 0, 3, T_MS + 3, 0, b"u1", message.value, None, 0, 0,
                               erasure.HEADERS)
        await archiver([message, record("u1", 2, "B"), again])
        assert events_of(pg) == [("u1", "B")]
        assert pg.execute("SELECT count(*) FROM user_erasures").fetchone()[0] == 1
    finally:
        await archiver.close()


def record(user: str, offset: int, item: str = "A") -> ConsumerRecord:
    value = orjson.dumps({"event_id": str(uuid.uuid4()), "user_id": user, "item_id": item,
                          "event_type": "view", "timestamp": T_MS + offset})
    return ConsumerRecord("events", 0, offset, T_MS + offset, 0, user.encode(), value, None, 0,
                          0, [])


def erasure_record(user: str, offset: int, value: bytes | None = None) -> ConsumerRecord:
    message = Erasure.of(user)
    return ConsumerRecord("events", 0, offset, T_MS + offset, 0, user.encode(),
                          message.to_json_bytes() if value is None else value, None, 0, 0,
                          erasure.HEADERS)


def events_of(pg: psycopg.Connection) -> list[tuple[str, str]]:
    return pg.execute("SELECT user_id, item_id FROM events ORDER BY kafka_offset").fetchall()


async def test_the_archiver_deletes_the_users_events_and_records_the_erasure(
    pg: psycopg.Connection, settings: Settings
) -> None:
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", 0, "a"), record("u2", 1, "a"), record("u1", 2, "b")])
        gone = erasure_record("u1", 4)
        batch = [record("u1", 3, "c"), gone, record("u1", 5, "d"), record("u2", 6, "e")]
        await archiver(batch)

        assert events_of(pg) == [("u2", "a"), ("u1", "d"), ("u2", "e")]
        # u1 is new from its event after the erasure on.
        first_seen = dict(pg.execute(
            "SELECT user_id, (extract(epoch FROM first_seen) * 1000)::bigint FROM users"))
        assert first_seen == {"u1": T_MS + 5, "u2": T_MS + 1}
        audit = pg.execute("SELECT erasure_id::text, user_pseudonym, events_deleted "
                           "FROM user_erasures").fetchall()
        erasure_id = orjson.loads(gone.value)["erasure_id"]
        key = settings.log_pseudonym_key.get_secret_value()
        assert audit == [(erasure_id, pseudonym("u1", key), 2)]  # c never got in
        assert "u1" not in str(audit)

        await archiver(batch)  # redelivered: the same rows, the audit row kept
        assert events_of(pg) == [("u2", "a"), ("u1", "d"), ("u2", "e")]
        assert pg.execute("SELECT count(*) FROM user_erasures").fetchone()[0] == 1
        # Archived before sql/009 (no position): the erasure's own record still tells.
        pg.execute("DELETE FROM archived_positions")
        await archiver(batch)
        assert events_of(pg) == [("u2", "a"), ("u1", "d"), ("u2", "e")]
        assert pg.execute("SELECT count(*) FROM user_erasures").fetchone()[0] == 1
    finally:
        await archiver.close()


MALFORMED = [
    b'{"user_id": "u1"}',
    b'{"erasure_id": "%s", "user_id": "u1", "requested_at": 4611686018427387904}',
    b'{"erasure_id": "%s", "user_id": "u1", "requested_at": -1}',
    b'{"erasure_id": "urn:uuid:%s", "user_id": "u1", "requested_at": 0}',
    b'{"erasure_id": "{%s}", "user_id": "u1", "requested_at": 0}',
    b'{"erasure_id": "%s", "user_id": "u1\\n", "requested_at": 0}',
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_a_malformed_erasure_erases_nothing_and_never_wedges_the_archiver(
    pg: psycopg.Connection, settings: Settings, value: bytes
) -> None:
    if b"%s" in value:
        value = value % str(uuid.uuid4()).encode()
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", 0)])
        await archiver([erasure_record("u1", 1, value), record("u1", 2, "B")])
        assert events_of(pg) == [("u1", "A"), ("u1", "B")]
        bad = split_for_features([erasure_record("u1", 1, value)], 300)
        assert bad.erasures == [] and bad.bad[0][1].startswith("invalid erasure: ")
    finally:
        await archiver.close()


async def test_two_erasures_of_a_user_in_one_batch_each_get_their_audit_row(
    pg: psycopg.Connection, settings: Settings
) -> None:
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", 0), record("u1", 1)])
        first, second = erasure_record("u1", 2), erasure_record("u1", 3)
        await archiver([first, second])
        audit = dict(pg.execute("SELECT erasure_id::text, events_deleted FROM user_erasures"))
        assert audit == {orjson.loads(first.value)["erasure_id"]: 2,
                         orjson.loads(second.value)["erasure_id"]: 0}
    finally:
        await archiver.close()


async def test_a_copy_of_an_applied_erasure_sent_later_keeps_the_events_since(
    pg: psycopg.Connection, settings: Settings
) -> None:
    """The same erasure id again, later in the topic (a client repeating its request with
    the id it was given): the events between the two stay."""
    archiver = Archiver(settings)
    try:
        message = erasure_record("u1", 1)
        await archiver([record("u1", 0), message])
        copy = ConsumerRecord("events", 0, 3, T_MS + 3, 0, b"u1", message.value, None, 0, 0,
                              erasure.HEADERS)
        await archiver([record("u1", 2, "B"), copy])
        assert events_of(pg) == [("u1", "B")]
        assert pg.execute("SELECT kafka_offset FROM user_erasures").fetchall() == [(1,)]
    finally:
        await archiver.close()


def test_the_event_log_stays_append_only_outside_an_erasure(pg: psycopg.Connection) -> None:
    pg.execute("INSERT INTO events (event_id, user_id, item_id, event_type, event_time) VALUES "
               "(gen_random_uuid(), 'u1', 'A', 'view', now()), "
               "(gen_random_uuid(), 'u2', 'A', 'view', now())")
    pg.commit()
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        pg.execute("DELETE FROM events WHERE user_id = 'u2'")
    pg.rollback()
    with pg.transaction():
        pg.execute("SELECT set_config('reco.erase_users', 'u1 u3', true)")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            pg.execute("DELETE FROM events")  # u2's row is not declared
    with pg.transaction():
        pg.execute("SELECT set_config('reco.erase_users', 'u1 u3', true)")
        assert pg.execute("DELETE FROM events WHERE user_id = 'u1'").rowcount == 1
    assert pg.execute("SELECT user_id FROM events").fetchall() == [("u2",)]


def test_an_erasure_message_round_trips() -> None:
    message = Erasure.of("u-1")
    assert erasure.decode(message.to_json_bytes()) == message
    assert erasure.is_erasure(erasure.HEADERS) and not erasure.is_erasure([])
    assert erasure.decode(msgspec.json.encode(
        {**msgspec.structs.asdict(message), "user_id": "a b"})).startswith("invalid erasure")
    assert erasure.decode(b"nope").startswith("invalid erasure")


async def test_delete_user_erases_through_the_broker_and_later_events_stay(
    ingest: httpx.AsyncClient, consumers: Consumers, settings: Settings, pg: psycopg.Connection,
    redis_client: redis.Redis, kafka_topics: dict,
) -> None:
    r = redis_client
    now_ms = int(time.time() * 1000)
    events = [{"user_id": user, "item_id": item, "event_type": "view", "timestamp": now_ms + k}
              for k, (user, item) in enumerate([("u1", "A"), ("u1", "B"), ("u2", "A")])]
    assert (await ingest.post("/events/batch", json={"events": events})).status_code == 202
    answer = await ingest.delete("/users/u1")
    assert answer.status_code == 202
    erasure_id = answer.json()["erasure_id"]
    assert answer.json() == {"user_id": "u1", "erasure_id": erasure_id}
    later = {"user_id": "u1", "item_id": "C", "event_type": "view", "timestamp": now_ms + 9}
    assert (await ingest.post("/events", json=later)).status_code == 202
    queued = await ingest.get(f"/erasures/{erasure_id.upper()}")
    assert queued.status_code == 200
    assert queued.json() == {"erasure_id": erasure_id, "status": "pending",
                             "features_erased": False, "archive_erased": False,
                             "erased_at": None, "events_deleted": None}

    # On the topic: keyed by the user, marked by its header, between the user's events.
    records = await read_topic(settings, settings.topic_events, 5)
    marked = [rec for rec in records if erasure.is_erasure(rec.headers)]
    assert [(rec.key, orjson.loads(rec.value)["erasure_id"]) for rec in marked] == [
        (b"u1", erasure_id)]

    consumers.start("processor", settings)
    consumers.start("archiver", settings)
    await wait_for(lambda: pg.execute("SELECT count(*) FROM user_erasures").fetchone()[0],
                   "the archiver's erasure")
    await wait_for(lambda: r.lrange(keys.user_recent("u1"), 0, -1) == ["C"],
                   "the processor's erasure")
    await wait_for(lambda: len(pg.execute("SELECT 1 FROM events").fetchall()) == 2,
                   "the later event archived")
    assert sorted(pg.execute("SELECT user_id, item_id FROM events").fetchall()) == [
        ("u1", "C"), ("u2", "A")]
    assert r.zrange(keys.user_seen("u1"), 0, -1) == ["C"]
    assert r.lrange(keys.user_recent("u2"), 0, -1) == ["A"]
    done = (await ingest.get(f"/erasures/{erasure_id}")).json()
    # events_deleted: 0 when the erasure shared the batch of the events it dropped.
    erased_at, deleted = pg.execute("SELECT erased_at, events_deleted FROM user_erasures"
                                    ).fetchone()
    assert datetime.fromisoformat(done.pop("erased_at")) == erased_at
    assert done == {"erasure_id": erasure_id, "status": "done", "features_erased": True,
                    "archive_erased": True, "events_deleted": deleted}


async def test_delete_user_refuses_an_id_that_is_not_one(ingest: httpx.AsyncClient) -> None:
    answer = await ingest.delete("/users/" + "x" * 129)
    assert answer.status_code == 422
    assert [(e["loc"], e["field"]) for e in answer.json()["detail"]] == [
        (["path", "user_id"], "path.user_id")]


async def test_an_erasures_progress_needs_a_uuid(ingest: httpx.AsyncClient) -> None:
    answer = await ingest.get("/erasures/not-a-uuid")
    assert answer.status_code == 422
    assert [(e["loc"], e["field"], e["reason"]) for e in answer.json()["detail"]] == [
        (["path", "erasure_id"], "path.erasure_id",
         "must be a UUID (8-4-4-4-12 hexadecimal digits)")]
    # uuid.UUID would take these, the first two for other ids.
    for other_form in ("0x" + "1" * 30, "\u0661" * 32, f"urn:uuid:{uuid.uuid4()}"):
        assert (await ingest.get(f"/erasures/{other_form}")).status_code == 422, other_form


def test_an_erasure_is_done_once_archived_and_applied_or_requested_before_the_mark_window(
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=91)
    archived = Recorded(str(uuid.uuid4()), long_ago, long_ago, 3)
    assert not Progress(archived.erasure_id, True, None).done
    assert Progress(archived.erasure_id, True, archived).done
    assert Progress(archived.erasure_id, False, archived).done  # the marker expired since
    # Archived 80 days ago, 11 days after the request: the processor's marker (from about
    # the request) may have expired already.
    late = archived._replace(erased_at=datetime.now(UTC) - timedelta(days=80))
    assert Progress(archived.erasure_id, False, late).done
    recent = archived._replace(requested_at=datetime.now(UTC), erased_at=datetime.now(UTC))
    assert not Progress(archived.erasure_id, False, recent).done


async def test_an_events_marker_under_an_erasures_id_is_not_taken_for_its_erasure(
    ingest: httpx.AsyncClient, redis_client: redis.Redis, pg: psycopg.Connection
) -> None:
    """A client may send an event under any id: its dedup marker holds "1", not the position
    the processor writes for an erasure."""
    event_id = str(uuid.uuid4())
    redis_client.set(keys.event_seen(event_id), "1")
    assert (await ingest.get(f"/erasures/{event_id}")).json()["features_erased"] is False
    redis_client.set(keys.event_seen(event_id), "0 17")
    assert (await ingest.get(f"/erasures/{event_id}")).json()["features_erased"] is True


async def test_reco_db_erasures_lists_a_users_applied_erasures(
    pg: psycopg.Connection, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    archiver = Archiver(settings)
    try:
        await archiver([record("u1", 0)])
        await archiver([erasure_record("u1", 1)])
    finally:
        await archiver.close()
    monkeypatch.setenv("RECO_PG_PORT", str(settings.pg_port))
    get_settings.cache_clear()
    try:
        erased = CliRunner().invoke(app, ["db", "erasures", "u1"])
        never = CliRunner().invoke(app, ["db", "erasures", "u2"])
    finally:
        get_settings.cache_clear()
    [(erasure_id,)] = pg.execute("SELECT erasure_id::text FROM user_erasures").fetchall()
    said, not_said = (" ".join(result.output.split()) for result in (erased, never))
    assert erased.exit_code == 0 and f"erasure {erasure_id}" in said
    assert "1 events deleted" in said
    assert never.exit_code == 1 and "no erasure of 'u2' applied" in not_said


async def test_erasures_recorded_under_a_previous_key_are_found_while_it_is_listed(
    pg: psycopg.Connection, settings: Settings
) -> None:
    archiver = Archiver(settings)
    try:
        await archiver([erasure_record("u1", 0)])
    finally:
        await archiver.close()
    rotated = settings.model_copy(update={
        "log_pseudonym_key": SecretStr("new-pseudonym-key-0123456789")})
    assert erasure.recorded(rotated, "u1") == []
    listed = rotated.model_copy(update={
        "log_pseudonym_previous_keys": [settings.log_pseudonym_key]})
    assert [r.events_deleted for r in erasure.recorded(listed, "u1")] == [0]


async def test_an_expelled_archiver_writing_late_cannot_bring_erased_events_back(
    pg: psycopg.Connection, settings: Settings
) -> None:
    """The group moved the partition on while a copy of the archiver still held its batch: the
    new owner archived that batch and a later erasure, then the stale copy writes."""
    owner, stale = Archiver(settings), Archiver(settings)
    early = [record("u1", 0, "a"), record("u2", 1, "a"), record("u1", 2, "b")]
    try:
        await owner(early)
        await owner([erasure_record("u1", 3), record("u2", 4, "b")])
        await stale(early)
        assert events_of(pg) == [("u2", "a"), ("u2", "b")]
        # Its later records, those the owner has not archived, still land.
        await stale([record("u1", 5, "x"), record("u2", 6, "c")])
        assert events_of(pg) == [("u2", "a"), ("u2", "b"), ("u1", "x"), ("u2", "c")]
    finally:
        await owner.close()
        await stale.close()


async def test_a_stale_archiver_waits_for_the_owners_transaction_then_skips_its_batch(
    pg: psycopg.Connection, settings: Settings
) -> None:
    """Both write at once: the first to lock the partition's position wins, the other reads
    the position it moved on."""
    owner, stale = Archiver(settings), Archiver(settings)
    early = [record("u1", 0, "a"), record("u1", 1, "b")]
    try:
        with psycopg.connect(settings.database_url) as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            owning = asyncio.create_task(owner([*early, erasure_record("u1", 2)]))
            await wait_for(lambda: blocked_on(pg, "users"), "the owner to wait for users")
            staling = asyncio.create_task(stale(early))
            await wait_for(lambda: blocked_on(pg, "archived_positions"),
                           "the stale copy to wait for the position")
            holder.rollback()
        await asyncio.wait_for(asyncio.gather(owning, staling), 10)
        assert events_of(pg) == []
        assert pg.execute("SELECT next_offset FROM archived_positions").fetchall() == [(3,)]
    finally:
        await owner.close()
        await stale.close()


def blocked_on(pg: psycopg.Connection, table: str) -> bool:
    """Whether some session waits for a lock on `table` (a row's or the table's)."""
    return pg.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE a.wait_event_type = 'Lock' AND a.query ILIKE %s",
        (f"%{table}%",)).fetchone()[0] > 0
