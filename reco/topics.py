"""Kafka topics of the platform and their creation (idempotent)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

from reco.settings import Settings


class TopicCreationFailed(RuntimeError):
    """The broker refused to create a topic; the message names it and gives the broker's reason."""


def platform_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions (events are keyed by user_id: partitions are the unit of scale)."""
    return {settings.topic_events: settings.topic_partitions, settings.topic_dlq: 1}


def replication_factor(configured: int | None, brokers: int) -> int:
    """The configured factor, else 3 (a broker can fail without losing acknowledged events) on
    clusters that have 3 brokers, else every broker there is (one on the local stack)."""
    return configured if configured is not None else min(3, brokers)


def creation_errors(topic_errors: Sequence[tuple]) -> list[str]:
    """"topic: reason" for each topic of a CreateTopics response the broker refused. The
    broker answers per topic (aiokafka raises nothing); one that already exists is fine:
    another process may create it at the same moment."""
    failed = []
    for topic, code, *message in topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        reason = message[0] if message and message[0] else for_code(code).__name__
        failed.append(f"{topic}: {reason} (error code {code})")
    return failed


async def _start_admin(bootstrap: str, timeout_s: float) -> AIOKafkaAdminClient:
    """An admin client, waiting for the broker to accept connections first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 60.0,
                        replication: int | None = None) -> None:
    """Create missing topics (`replication`: see `replication_factor`); raise
    TopicCreationFailed naming each topic the broker refused and why."""
    admin = await _start_admin(bootstrap, timeout_s)
    try:
        existing = set(await admin.list_topics())
        if not topics.keys() - existing:
            return
        brokers = len((await admin.describe_cluster())["brokers"])
        factor = replication_factor(replication, brokers)
        missing = [NewTopic(name=name, num_partitions=parts, replication_factor=factor)
                   for name, parts in topics.items() if name not in existing]
        response = await admin.create_topics(missing)
        failed = creation_errors(response.topic_errors)
        if failed:
            raise TopicCreationFailed("the broker refused to create " + "; ".join(failed))
    finally:
        await admin.close()
