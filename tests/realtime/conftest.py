"""Fixtures of the real-time path tests: the ingest app over ASGI, consumers as asyncio tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from reco.settings import Settings
from serving.ingest import create_app
from streaming import archiver, processor

WAIT_S = 60.0  # a deadline for conditions, not a timing assertion


async def wait_for(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)



@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The hand computations of these tests use a 24 h popularity half-life, pinned here so
    tuning the default does not change what they check."""
    return settings.model_copy(update={"popularity_half_life_h": 24.0})

@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest app with its real producer, PostgreSQL pool and Redis client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


class Consumers:
    """Runs the processor and the archiver as tasks, each stopped through its own event."""

    def __init__(self) -> None:
        self.running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(self, name: str, settings: Settings) -> asyncio.Event:
        module = {"processor": processor, "archiver": archiver}[name]
        stop = asyncio.Event()
        self.running.append((stop, asyncio.create_task(module.run_async(settings, stop))))
        return stop

    async def stop_all(self) -> None:
        for stop, _ in self.running:
            stop.set()
        for _, task in self.running:
            await asyncio.wait_for(task, 30)  # re-raises a consumer's crash
        self.running.clear()


@pytest.fixture
async def consumers() -> AsyncIterator[Consumers]:
    runner = Consumers()
    yield runner
    await runner.stop_all()


async def produce(settings: Settings, messages: Iterable[tuple[bytes | None, bytes]],
                  topic: str | None = None) -> None:
    """Write raw (key, value) messages straight to Kafka, bypassing the ingest API."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic or settings.topic_events, value, key=key)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, expected: int) -> list[Any]:
    """Every message of `topic` from the start, waiting until `expected` are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions(settings, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(r for part in batch.values() for r in part)
        return records
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str) -> int:
    """How many messages `topic` holds across its partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = await _partitions(settings, topic)
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in meta["partitions"]]
