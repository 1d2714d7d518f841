"""Kafka topics of the platform and their creation (idempotent)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from reco.settings import Settings


def platform_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions (events are keyed by user_id: partitions are the unit of scale)."""
    return {settings.topic_events: settings.topic_partitions, settings.topic_dlq: 1}


async def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 60.0) -> None:
    """Create missing topics, waiting for the broker to accept connections first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=name, num_partitions=parts, replication_factor=1)
            for name, parts in topics.items()
            if name not in existing
        ]
        if missing:
            # Another process may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
