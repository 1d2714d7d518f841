"""`reco topics create` against the session's real Kafka broker: refusals are errors."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from typer.testing import CliRunner

from reco.cli import app
from reco.settings import get_settings
from reco.topics import TopicCreationFailed, ensure_topics, replication_factor
from tests.servers import ServerProcess

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _topics_create(bootstrap: str, events: str, dlq: str, partitions: int,
                   *args: str) -> tuple[int, str]:
    """`reco topics create ARGS` with these settings: exit code and output, lines joined."""
    env = {"RECO_KAFKA_BOOTSTRAP": bootstrap, "RECO_TOPIC_EVENTS": events,
           "RECO_TOPIC_DLQ": dlq, "RECO_TOPIC_PARTITIONS": str(partitions)}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["topics", "create", *args], env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, " ".join(result.output.split())


async def _replicas(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [len(p["replicas"]) for p in described["partitions"]]


def test_topics_are_created_once_with_as_many_replicas_as_brokers(
        kafka_server: ServerProcess) -> None:
    bootstrap, name = f"127.0.0.1:{kafka_server.port}", _name()
    asyncio.run(ensure_topics(bootstrap, {name: 3}))
    asyncio.run(ensure_topics(bootstrap, {name: 3}))  # exists already: fine
    assert asyncio.run(_replicas(bootstrap, name)) == [1, 1, 1]  # one broker


async def _produce_and_read(bootstrap: str, topic: str, timestamp_ms: int):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


def test_records_carry_the_brokers_clock_not_the_producers(kafka_server: ServerProcess) -> None:
    """The processor tells a recreated topic's records from redeliveries by their time; an
    ingest host whose clock ran slow made them look applied, and they were skipped."""
    bootstrap, name = f"127.0.0.1:{kafka_server.port}", _name()
    asyncio.run(ensure_topics(bootstrap, {name: 1}))
    before_ms = int(time.time() * 1000)
    record = asyncio.run(_produce_and_read(bootstrap, name, before_ms - 3_600_000))
    assert record.timestamp_type == 1  # LogAppendTime
    assert before_ms - 1000 <= record.timestamp <= int(time.time() * 1000) + 1000


async def _create_with_producer_time(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1,
                                            topic_configs={"retention.ms": "3600000"})])
    finally:
        await admin.close()


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the answer is in
    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result(30).items()}


def test_a_topic_of_an_earlier_release_gets_the_brokers_clock_and_keeps_its_settings(
        kafka_server: ServerProcess) -> None:
    bootstrap, name = f"127.0.0.1:{kafka_server.port}", _name()
    asyncio.run(_create_with_producer_time(bootstrap, name))
    assert _topic_config(bootstrap, name)["message.timestamp.type"] == "CreateTime"
    asyncio.run(ensure_topics(bootstrap, {name: 1}))
    config = _topic_config(bootstrap, name)
    assert config["message.timestamp.type"] == "LogAppendTime"
    assert config["retention.ms"] == "3600000"  # the operator's own setting stays


@pytest.mark.parametrize(("topic", "partitions", "replication", "reason"), [
    ("bad topic!", 1, None, "Topic name is invalid: 'bad topic!'"),
    ("{}", 0, None, "Number of partitions was set to an invalid non-positive value"),
    ("{}", 1, 3, "The target replication factor of 3 cannot be reached because only 1"),
])
def test_a_refused_topic_is_an_error_naming_it_and_the_brokers_reason(
        kafka_server: ServerProcess, topic: str, partitions: int, replication: int | None,
        reason: str) -> None:
    bootstrap, topic = f"127.0.0.1:{kafka_server.port}", topic.format(_name())
    with pytest.raises(TopicCreationFailed, match=f"refused to create {topic}: .*{reason}"):
        asyncio.run(ensure_topics(bootstrap, {topic: partitions}, replication=replication))


def test_cli_exits_1_when_the_broker_refuses_a_topic(kafka_server: ServerProcess) -> None:
    code, output = _topics_create(f"127.0.0.1:{kafka_server.port}", "events with spaces",
                                  _name(), 3)
    assert code == 1, output
    assert "refused to create events with spaces: Topic name is invalid" in output
    assert "partitions)" not in output  # no success line


def test_partitions_are_added_only_when_asked_and_a_difference_is_reported(
        kafka_server: ServerProcess) -> None:
    bootstrap, events, dlq = f"127.0.0.1:{kafka_server.port}", _name(), _name()
    code, output = _topics_create(bootstrap, events, dlq, 2)
    assert code == 0 and f"{events} (2 partitions), {dlq} (1 partitions)" in output
    assert "settings ask" not in output

    code, output = _topics_create(bootstrap, events, dlq, 4)
    assert code == 0 and f"{events} (2 partitions)" in output  # as it is, not as asked
    assert (f"{events} has 2 partitions, the settings ask for 4: run `reco topics create "
            f"--add-partitions`") in output
    assert asyncio.run(_replicas(bootstrap, events)) == [1, 1]

    code, output = _topics_create(bootstrap, events, dlq, 4, "--add-partitions")
    assert code == 0 and f"{events} (4 partitions)" in output and "settings ask" not in output
    assert asyncio.run(_replicas(bootstrap, events)) == [1, 1, 1, 1]

    code, output = _topics_create(bootstrap, events, dlq, 3, "--add-partitions")
    assert code == 0 and f"{events} (4 partitions)" in output
    assert f"{events} has 4 partitions, the settings ask for 3: Kafka cannot remove" in output


@pytest.mark.parametrize(("configured", "brokers", "factor"), [
    (None, 1, 1), (None, 2, 2), (None, 5, 3), (2, 5, 2), (3, 1, 3)])
def test_replication_defaults_to_three_or_every_broker(configured: int | None, brokers: int,
                                                       factor: int) -> None:
    assert replication_factor(configured, brokers) == factor
