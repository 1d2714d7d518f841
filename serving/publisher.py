"""Publishing events to Kafka for the ingest API: acks=all, idempotent, key = user_id.

The API answers 202 only after every message's future resolved (the broker acknowledged it);
any broker failure or an ack slower than the timeout becomes `BrokerUnavailable` (HTTP 503).
If the broker is down when the API starts, the producer keeps reconnecting in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from reco.events import Event
from reco.settings import Settings

log = logging.getLogger(__name__)

RECONNECT_S = 2.0


class BrokerUnavailable(Exception):
    """The broker did not acknowledge: the client must retry (with the same event ids)."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_events
        self.timeout_s = settings.ingest_ack_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._partitioner = DefaultPartitioner()  # the one send() uses: murmur2, like Java

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            max_batch_size=512 * 1024,  # a 1,000-event batch fits a few produce requests
            request_timeout_ms=int(self.timeout_s * 1000),
            client_id="reco-ingest",
        )

    async def start(self) -> None:
        """Connect now if the broker is up, else keep trying in the background."""
        if not await self._try_connect():
            self._connector = asyncio.create_task(self._reconnect_forever())

    async def _try_connect(self) -> bool:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("broker %s not reachable: %r", self.settings.kafka_bootstrap, exc)
            await producer.stop()
            return False
        self._producer = producer
        return True

    async def _reconnect_forever(self) -> None:
        while not await self._try_connect():
            await asyncio.sleep(RECONNECT_S)

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
        if self._producer is not None:
            await self._producer.stop()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def publish(self, events: Sequence[Event]) -> None:
        """Send every event, then wait for all acks; raises BrokerUnavailable on any failure."""
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("broker not connected")
        try:
            async with asyncio.timeout(self.timeout_s):
                if len(events) == 1:
                    e = events[0]
                    await (await producer.send(self.topic, e.to_json_bytes(),
                                               key=e.user_id.encode()))
                else:
                    await asyncio.gather(*await self._send_batches(producer, events))
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker did not acknowledge: {exc!r}") from exc

    async def _send_batches(
        self, producer: AIOKafkaProducer, events: Sequence[Event]
    ) -> list[asyncio.Future]:
        """One record batch per partition instead of one `send()` per event: per-message
        overhead in aiokafka's accumulator dominated the batch endpoint. Partitions come from
        the producer's own partitioner, so a user's events land where `send()` puts them."""
        partitions = sorted(await producer.partitions_for(self.topic))
        by_user: dict[str, int] = {}
        batches: dict[int, object] = {}
        futures = []
        for e in events:
            key = e.user_id.encode()
            partition = by_user.get(e.user_id)
            if partition is None:
                partition = by_user[e.user_id] = self._partitioner(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=e.to_json_bytes(), timestamp=None) is None:
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=e.to_json_bytes(), timestamp=None)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        return futures

    async def check(self) -> bool:
        """Readiness: a metadata round trip to the broker succeeds."""
        if self._producer is None:
            return False
        try:
            async with asyncio.timeout(2.0):
                await self._producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True
