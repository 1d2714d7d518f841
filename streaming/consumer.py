"""The at-least-once batch loop both consumers share.

Fetch a batch, run the handler's side effects (retrying with exponential backoff while a store
is down, never skipping), and only then commit `last offset + 1` per partition. Handlers make
their writes idempotent, so a redelivery after a crash or a rebalance is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from reco import heap
from reco.settings import Settings
from streaming.metrics import BATCH_SECONDS, CONSUMER_LAG, PROCESSING_ERRORS

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]

POLL_TIMEOUT_MS = 200
BACKOFF_START_S = 0.1


def make_consumer(settings: Settings, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


async def start_with_retry(client: object, stop: asyncio.Event, max_s: float) -> bool:
    """Start an aiokafka client, waiting for the broker; False if asked to stop meanwhile."""
    delay = BACKOFF_START_S
    while not stop.is_set():
        try:
            await client.start()  # type: ignore[attr-defined]
            return True
        except KafkaConnectionError as exc:
            log.warning("broker not reachable (%s); retrying in %.1fs", exc, delay)
            await _sleep_or_stop(stop, delay)
            delay = min(delay * 2, max_s)
    return False


async def run_batches(
    consumer: AIOKafkaConsumer, handle: Handler, stop: asyncio.Event, *,
    group: str, batch_max: int, backoff_max_s: float,
) -> None:
    """Consume until `stop` is set; the batch in progress is finished and committed first.

    A batch's commit runs while the next batch is processed (its side effects are already
    done, so only the broker round trip overlaps); commits stay in order, one at a time.
    """
    committing: asyncio.Task[None] | None = None
    lag = PartitionLag(consumer, group)
    heap.settle()
    try:
        while not stop.is_set():
            batches = await _fetch(consumer, batch_max)
            records = [r for part in batches.values() for r in part]
            if records:
                started = time.perf_counter()
                if not await _until_done(handle, records, stop, group, backoff_max_s):
                    return  # stopping while a store is down: leave the batch uncommitted
                BATCH_SECONDS.labels(group).set(time.perf_counter() - started)
                if committing is not None:
                    await committing
                offsets = {tp: part[-1].offset + 1 for tp, part in batches.items()}
                committing = asyncio.create_task(_commit(consumer, offsets))
            await lag.record()
    finally:
        lag.clear()
        if committing is not None:
            await committing


async def _fetch(
    consumer: AIOKafkaConsumer, batch_max: int, timeout_ms: int = POLL_TIMEOUT_MS
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """Up to `batch_max` records: wait for the first, then take whatever else is buffered.

    One getmany() returns a single fetch response's worth (often ~100 records); per-batch
    costs (Redis round trips, the commit) are paid once per batch, so fuller batches matter.
    """
    batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=batch_max)
    count = sum(len(part) for part in batches.values())
    while 0 < count < batch_max:
        more = await consumer.getmany(timeout_ms=0, max_records=batch_max - count)
        if not more:
            break
        for tp, part in more.items():
            batches.setdefault(tp, []).extend(part)
            count += len(part)
    return batches


async def _until_done(
    handle: Handler, records: Sequence[ConsumerRecord], stop: asyncio.Event,
    group: str, backoff_max_s: float,
) -> bool:
    delay = BACKOFF_START_S
    while True:
        try:
            await handle(records)
            return True
        except Exception as exc:  # any failure: retry the same batch, never skip it
            PROCESSING_ERRORS.labels(group, type(exc).__name__).inc()
            log.warning("%s: batch failed (%r); retrying in %.1fs", group, exc, delay)
            if await _sleep_or_stop(stop, delay):
                return False
            delay = min(delay * 2, backoff_max_s)


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        # E.g. a rebalance moved the partitions: whoever owns them re-reads, idempotently.
        log.warning("offset commit failed (%r); the batch will be redelivered", exc)


class PartitionLag:
    """The `kafka_consumer_lag` series of one consumer: exactly the partitions it owns.

    Each copy of a consumer exposes its own /metrics page and dashboards sum lag over the pages,
    so a partition lost in a rebalance must leave the page (the new owner reports it), not stay
    there frozen at its last value.
    """

    def __init__(self, consumer: AIOKafkaConsumer, group: str) -> None:
        self._consumer = consumer
        self._group = group
        self._shown: set[TopicPartition] = set()

    async def record(self) -> None:
        assigned = self._consumer.assignment()
        self._drop(self._shown - assigned)
        for tp in assigned:
            lag = await self._lag(tp)
            # Unknown (no fetch response since the assignment, or no position yet): keep what
            # this consumer last showed for the partition, if anything, until it is known.
            if lag is not None:
                CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(lag)
                self._shown.add(tp)

    def clear(self) -> None:
        """Drop every series: a stopped consumer owns no partition."""
        self._drop(set(self._shown))

    def _drop(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            CONSUMER_LAG.remove(self._group, tp.topic, str(tp.partition))
            self._shown.discard(tp)

    async def _lag(self, tp: TopicPartition) -> int | None:
        # A rebalance may run while an earlier partition's position() is awaited: highwater()
        # asserts the partition is still assigned, and a series set now would be stale.
        if tp not in self._consumer.assignment():
            return None
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            return None
        try:
            position = await self._consumer.position(tp)
        except KafkaError:  # e.g. IllegalStateError: unassigned meanwhile
            return None
        if tp not in self._consumer.assignment():
            return None
        return max(highwater - position, 0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early on stop; True if stop was requested."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT ask the loop to finish its batch, commit and exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
