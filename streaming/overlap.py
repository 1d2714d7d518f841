"""The processor's batch loop: one batch's Redis write overlaps the next batch's work.

Per batch, the plain loop (streaming/consumer.py) reads from Redis, plans in Python, then waits
while Redis executes the write: Python and Redis took turns on a two-core machine. Here, once
batch k is planned and batch k+1 fetched, k+1's read goes out first, then k's write (on a
second connection); Python plans k+1 while Redis executes k's write. The plan of k+1 takes the
users, event ids and partition positions of k from k's plan, not from Redis (one partition,
hence this process, owns each user). Offsets of k are committed only after k's write
succeeded; on any failure both batches go through the plain path again (with its retries),
whose applied positions and markers make whatever did get written a no-op. When a rebalance
revokes partitions, the planned batch is written and committed before the consumer rejoins, so
the next owner does not plan it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from reco import heap
from streaming import consumer as loop
from streaming.feature_store import PlannedBatch, WriteConflict
from streaming.messages import split_for_features
from streaming.metrics import BATCH_SECONDS, PROCESSING_ERRORS

if TYPE_CHECKING:
    from streaming.processor import Processor

log = logging.getLogger(__name__)


@dataclass
class _Planned:
    records: list[ConsumerRecord]
    offsets: dict[TopicPartition, int]
    bad: list[tuple[ConsumerRecord, str]]
    plan: PlannedBatch


async def run_overlapped(
    consumer: AIOKafkaConsumer, processor: Processor, stop: asyncio.Event, *,
    commits: loop.Commits, group: str, batch_max: int, backoff_max_s: float,
) -> None:
    """Consume until `stop` is set; the planned batch is written and committed first."""
    store = processor.store
    pending: _Planned | None = None
    lag = commits.lag = loop.PartitionLag(consumer, group, settled=commits.drain)

    async def plainly(batch: list[ConsumerRecord], offsets: dict[TopicPartition, int]) -> bool:
        if not await loop._until_done(processor, batch, stop, group, backoff_max_s, lag):
            return False  # stopping while a store is down: leave the batch uncommitted
        await commits.commit(offsets)
        return True

    async def write(done: _Planned) -> None:
        if done.plan.commands:
            await store.write(done.plan)
        await processor.finish(done.plan.result, done.bad)

    async def flush() -> bool:
        """Write the planned batch (nothing else to overlap it with) and commit it."""
        nonlocal pending
        done, pending = pending, None
        assert done is not None
        try:
            await write(done)
        except Exception as exc:  # noqa: BLE001 - the plain path retries and reports
            _failed(group, exc)
            return await plainly(done.records, done.offsets)
        await commits.commit(done.offsets)
        return True

    async def flush_on_revoke() -> None:
        """A rebalance: write and commit the planned batch now, so that its partitions' next
        owner does not plan it again. One attempt (a revocation is bounded): on failure the
        batch stays pending and the loop goes on with it as usual."""
        nonlocal pending
        if pending is None:
            return
        try:
            await write(pending)
        except Exception as exc:  # noqa: BLE001 - the loop retries it and reports
            log.warning("%s: planned batch not written on revocation (%r)", group, exc)
            return
        done, pending = pending, None
        await commits.commit(done.offsets)

    async def step(batches: dict[TopicPartition, list[ConsumerRecord]]) -> bool:
        """Plan the fetched batch while the pending one is written; False to stop."""
        nonlocal pending
        records = [r for part in batches.values() for r in part]
        if not records:
            return pending is None or await flush()
        started = time.perf_counter()
        offsets = loop.next_offsets(batches)
        batch = split_for_features(records, processor.settings.max_future_skew_s)
        previous = pending
        planning = asyncio.create_task(
            store.plan(batch.events, after=previous.plan if previous else None,
                       erasures=batch.erasures))
        writing = (asyncio.create_task(store.write(previous.plan))
                   if previous is not None and previous.plan.commands else None)
        try:
            planned = await planning
            if writing is not None:
                await writing
            if previous is not None:
                await processor.finish(previous.plan.result, previous.bad)
        except Exception as exc:  # noqa: BLE001 - the plain path retries and reports
            _failed(group, exc)
            await asyncio.gather(*(t for t in (planning, writing) if t is not None),
                                 return_exceptions=True)
            pending = None
            if previous is not None and not await plainly(previous.records, previous.offsets):
                return False
            return await plainly(records, offsets)
        if previous is not None:
            await commits.commit(previous.offsets)
        pending = _Planned(records, offsets, batch.bad, planned)
        BATCH_SECONDS.labels(group).set(time.perf_counter() - started)
        return True

    commits.before_revoke = flush_on_revoke
    heap.settle()
    try:
        while not stop.is_set():
            wait_ms = loop.POLL_TIMEOUT_MS if pending is None else 0
            batches = await loop._fetch(consumer, commits, batch_max, wait_ms)
            async with commits.in_hand:
                if not await step(batches):
                    return
            await lag.record()
        async with commits.in_hand:
            if pending is not None:
                await flush()
    finally:
        commits.before_revoke = None
        lag.clear()
        await commits.drain()


def _failed(group: str, exc: Exception) -> None:
    if isinstance(exc, WriteConflict):
        # Another processor applied events of the batch (a rebalance moved the partition
        # meanwhile): expected, not an error; the plain path skips what it applied.
        log.info("%s: %s; redoing the batch plainly", group, exc)
        return
    PROCESSING_ERRORS.labels(group, type(exc).__name__).inc()
    log.warning("%s: overlapped batch failed (%r); redoing it plainly", group, exc)
