"""Feature processor: consumer group `reco-processor`, topic `events` -> Redis features.

It is also the one consumer that publishes bad messages to the DLQ (the archiver skips them),
so each bad message is dead-lettered once. Events dated too far ahead for the features
(streaming/messages.py) are dead-lettered here and still archived. Run with `reco run
processor`; scale by running more copies (partitions are the unit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from reco import privacy
from reco.privacy import pseudonym
from reco.settings import Settings
from streaming import consumer as loop
from streaming.applied_positions import LogEnd
from streaming.feature_store import AppliedBatch, FeatureStore
from streaming.messages import dlq_record, split_for_features
from streaming.metrics import (
    DLQ_PUBLISHED,
    EVENTS_DUPLICATE,
    EVENTS_PROCESSED,
    EVENTS_UNSCORED,
    PROCESSING_ERRORS,
    USERS_ERASED,
    serve_metrics,
)
from streaming.overlap import run_overlapped
from streaming.popularity_prune import prune_periodically
from streaming.redis_pipe import RedisPipe

log = logging.getLogger(__name__)


class Processor:
    """The batch handler: Redis updates for valid events, DLQ records for the rest."""

    def __init__(self, store: FeatureStore, dlq: AIOKafkaProducer, settings: Settings) -> None:
        self.store = store
        self.dlq = dlq
        self.settings = settings

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        """The plain path: apply a batch and wait for it (also the overlapped loop's fallback)."""
        batch = split_for_features(records, self.settings.max_future_skew_s)
        # Redis first: on a retry its positions and markers make it a no-op, so only the DLQ
        # can repeat.
        result = (await self.store.apply(batch.events, batch.erasures)
                  if batch.events or batch.erasures else None)
        await self.finish(result, batch.bad)

    async def finish(self, result: AppliedBatch | None,
                     bad: list[tuple[ConsumerRecord, str]]) -> None:
        """After the batch's Redis write succeeded: dead-letter its bad messages, count it."""
        if bad:
            await self._dead_letter(bad)
        if result is not None:
            for event_type, count in Counter(e.event_type for e in result.applied).items():
                EVENTS_PROCESSED.labels(event_type).inc(count)
            EVENTS_DUPLICATE.inc(result.duplicates)
            EVENTS_UNSCORED.inc(result.unscored)
            if result.erased:
                USERS_ERASED.labels(self.settings.group_processor).inc(len(result.erased))
                for erased in result.erased:
                    log.info("erasure %s of %s: features deleted", erased.erasure_id,
                             pseudonym(erased.user_id))

    async def _dead_letter(self, bad: list[tuple[ConsumerRecord, str]]) -> None:
        futures = []
        for r, reason in bad:
            key, value = dlq_record(r, reason)
            futures.append(await self.dlq.send(self.settings.topic_dlq, value, key=key))
        await asyncio.gather(*futures)
        for record, reason in bad:
            log.warning("dead-lettered %s[%d]@%d: %s",
                        record.topic, record.partition, record.offset, reason)
        PROCESSING_ERRORS.labels(self.settings.group_processor, "invalid_message").inc(len(bad))
        DLQ_PUBLISHED.inc(len(bad))


async def run_async(settings: Settings, stop: asyncio.Event) -> None:
    """Process until `stop` is set, then finish the batch in hand, commit and close."""
    client, writer = (RedisPipe(settings.redis_url, timeout_s=settings.processor_redis_timeout_s)
                      for _ in range(2))
    dlq = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                           enable_idempotence=True)
    consumer, commits = loop.make_consumer(settings, settings.group_processor)
    # Off the batch loop, on its own connection; one replica per RECO_POPULARITY_PRUNE_S.
    pruning = asyncio.create_task(prune_periodically(settings, stop))
    try:
        if not await loop.start_with_retry(dlq, stop, settings.consumer_backoff_max_s):
            return
        if not await loop.start_with_retry(consumer, stop, settings.consumer_backoff_max_s):
            return
        store = FeatureStore(client, settings, writer, log_end_of(consumer, settings.topic_events))
        handler = Processor(store, dlq, settings)
        await run_overlapped(consumer, handler, stop, commits=commits,
                             group=settings.group_processor,
                             batch_max=settings.consumer_batch_max,
                             backoff_max_s=settings.consumer_backoff_max_s)
    finally:
        pruning.cancel()
        await asyncio.wait([pruning])  # not `await pruning`: our own cancellation must propagate
        await consumer.stop()
        await dlq.stop()
        await client.close()
        await writer.close()


def log_end_of(consumer: AIOKafkaConsumer, topic: str) -> LogEnd:
    """Each assigned partition's log end as the consumer's last fetch saw it (None otherwise:
    `highwater()` asserts the partition is assigned)."""
    def log_end(partition: int) -> int | None:
        tp = TopicPartition(topic, partition)
        return consumer.highwater(tp) if tp in consumer.assignment() else None
    return log_end


def run(settings: Settings) -> None:
    """Entry point of `reco run processor`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve_metrics(settings.processor_metrics_port, settings.group_processor,
                  "RECO_PROCESSOR_METRICS_PORT")
    privacy.configure(settings.log_pseudonym_key)  # erasures are logged by pseudonym

    async def main() -> None:
        stop = asyncio.Event()
        loop.stop_on_signals(stop)
        await run_async(settings, stop)

    asyncio.run(main())
