"""The ingest publisher (librdkafka) against the real broker: wire format, partitions, recovery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import KafkaError

from reco.events import Event
from reco.settings import Settings
from reco.stack.health import free_port
from serving.publisher import BrokerUnavailable, Publisher
from tests.realtime.conftest import read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(settings: Settings, kafka_topics: dict) -> AsyncIterator[Publisher]:
    """A started publisher on the test broker, stopped (its queue drained) afterwards."""
    started = Publisher(settings)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


def events(n: int, users: int) -> list[Event]:
    return [Event(user_id=f"user-{k % users}", item_id=f"i{k}", event_type="view",
                  session_id="s1", context={"page": "home"}) for k in range(n)]


async def test_messages_keep_the_wire_format_and_the_java_partitioner(
    settings: Settings, publisher: Publisher
) -> None:
    sent = events(120, users=60)
    await publisher.publish(sent[:1])
    await publisher.publish(sent[1:])
    records = await read_topic(settings, settings.topic_events, len(sent))
    # exactly the bytes the processor and archiver always read, keyed by user
    assert sorted((r.key, r.value) for r in records) == sorted(
        (e.user_id.encode(), e.to_json_bytes()) for e in sent)
    # murmur2 as Java and aiokafka partition: a user's events stay where they went before
    java = DefaultPartitioner()
    assert all(r.partition == java(r.key, [0, 1, 2], [0, 1, 2]) for r in records)
    assert {r.partition for r in records} == {0, 1, 2}


async def test_a_fatal_producer_error_replaces_the_producer(
    settings: Settings, publisher: Publisher
) -> None:
    """librdkafka reconnects by itself; only a fatal error (here injected the way librdkafka
    reports one) ends a producer, and the publisher carries on with a new one."""
    sent = events(2, users=1)
    await publisher.publish(sent[:1])
    old = publisher._producer
    publisher._on_error(KafkaError(KafkaError._FATAL, "injected", fatal=True))
    await wait_for(lambda: publisher._producer is not old, "a new producer")
    await publisher.publish(sent[1:])
    records = await read_topic(settings, settings.topic_events, 2)
    assert sorted(r.value for r in records) == sorted(e.to_json_bytes() for e in sent)


async def test_concurrent_requests_are_each_answered_after_their_acks(
    settings: Settings, publisher: Publisher
) -> None:
    sent = events(300, users=50)
    await asyncio.gather(*(publisher.publish((e,)) for e in sent))
    records = await read_topic(settings, settings.topic_events, len(sent))
    assert sorted(r.value for r in records) == sorted(e.to_json_bytes() for e in sent)


class _Unserialisable:
    """An event whose serialisation fails (a bug, not a broker error)."""

    event_id = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
    message_id = str(event_id)
    user_id = "user-x"
    kafka_headers = None

    def to_json_bytes(self) -> bytes:
        raise ValueError("cannot serialise")


async def test_a_request_that_cannot_be_produced_fails_alone(
    settings: Settings, publisher: Publisher
) -> None:
    """Requests of one loop iteration are produced together: one failing must answer 503 at
    once and leave the others to be acknowledged (not wait for the ack timeout)."""
    good = events(3, users=3)
    results = await asyncio.wait_for(asyncio.gather(
        publisher.publish(good[:1]), publisher.publish([_Unserialisable()]),
        publisher.publish(good[1:]), return_exceptions=True), settings.ingest_ack_timeout_s)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], BrokerUnavailable)
    assert "cannot serialise" in str(results[1])
    assert results[1].event_ids == [str(_Unserialisable.event_id)]
    records = await read_topic(settings, settings.topic_events, len(good))
    assert sorted(r.value for r in records) == sorted(e.to_json_bytes() for e in good)


async def test_a_partly_produced_request_fails_with_all_its_event_ids(
    settings: Settings, publisher: Publisher
) -> None:
    """The first event of the request is published, the second is not: the failure names both
    ids, so a client that sent none can retry without counting the first twice."""
    first = events(1, users=1)[0]
    with pytest.raises(BrokerUnavailable) as failed:
        await publisher.publish([first, _Unserialisable()])
    assert failed.value.event_ids == [str(first.event_id), str(_Unserialisable.event_id)]
    [record] = await read_topic(settings, settings.topic_events, 1)
    assert record.value == first.to_json_bytes()


async def test_a_recurring_fatal_error_replaces_the_producer_at_most_so_often(
    publisher: Publisher,
) -> None:
    fatal = KafkaError(KafkaError._FATAL, "injected", fatal=True)
    first = publisher._producer
    publisher._on_error(fatal)
    await wait_for(lambda: publisher._producer is not first, "a new producer")
    second = publisher._producer
    publisher.replace_every_s = 3600.0  # the next replacement is far off
    publisher._on_error(fatal)
    await asyncio.sleep(0.5)  # several polls
    assert publisher._producer is second
    publisher.replace_every_s = 0.0
    await wait_for(lambda: publisher._producer is not second, "a third producer")
    await publisher.publish(events(1, users=1))


async def test_a_request_still_waiting_when_the_publisher_stops_fails(settings: Settings) -> None:
    """A request published while stop() drains (the broker does not answer) gets its 503
    when stop() ends instead of never being answered."""
    publisher = Publisher(settings.model_copy(update={  # a port nothing listens on: no broker
        "kafka_bootstrap": f"127.0.0.1:{free_port()}", "ingest_ack_timeout_s": 1.0}))
    await publisher.start()
    first = asyncio.create_task(publisher.publish(events(1, users=1)))
    await asyncio.sleep(0.05)  # produced: stop() has something to drain
    stopping = asyncio.create_task(publisher.stop())
    await asyncio.sleep(0.05)
    late = asyncio.create_task(publisher.publish(events(1, users=1)))  # its deadline is later
    await stopping
    with pytest.raises(BrokerUnavailable):
        await first
    with pytest.raises(BrokerUnavailable):  # not a TimeoutError: it was answered
        await asyncio.wait_for(late, 1.0)
