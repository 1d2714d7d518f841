"""The at-least-once batch loop both consumers share.

Fetch a batch, run the handler's side effects (retrying with exponential backoff while a store
is down, never skipping), and only then commit `last offset + 1` per partition. Handlers make
their writes idempotent, so a redelivery after a crash or a rebalance is harmless; committing
on partition revocation (`Commits`) keeps a rebalance from causing redeliveries at all.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from reco import heap
from reco.settings import Settings
from streaming.metrics import BATCH_SECONDS, CONSUMER_LAG, PROCESSING_ERRORS

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]

POLL_TIMEOUT_MS = 200
BACKOFF_START_S = 0.1
# How long a revocation waits for the batch in hand. Every member of the group waits for this
# one to rejoin, and the broker drops a member that takes longer than the rebalance timeout
# (aiokafka: the session timeout, 10 s by default), counted before this member even hears of
# the rebalance at its next heartbeat (every 3 s): 3 + 3 s leaves room for the round trips.
REVOKE_WAIT_S = 3.0
# The broker round trips refreshing lag while a batch is stuck: each retry waits at most this
# more (a broker that does not answer must not slow the retries of a store that came back).
STUCK_LAG_TIMEOUT_S = 2.0


def make_consumer(settings: Settings, group: str) -> tuple[AIOKafkaConsumer, Commits]:
    """A consumer of the events topic, and the `Commits` that commits its offsets (also on
    partition revocation: it is the subscription's rebalance listener)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    return consumer, Commits.subscribe(consumer, settings.topic_events)


class Commits(ConsumerRebalanceListener):
    """Commits `last offset + 1` per partition of the batches whose side effects are done.

    Commits run in order, one at a time, each in the background while the next batch is
    processed. When a rebalance revokes partitions, the batch in hand is finished and committed
    before the consumer rejoins, so the partitions' next owner starts after it instead of
    redoing it (redone work is harmless, the writes being idempotent, but wasted).
    """

    def __init__(self, consumer: AIOKafkaConsumer, revoke_wait_s: float = REVOKE_WAIT_S) -> None:
        self.consumer = consumer
        # Held by a loop from the moment a fetch returns records until their commit is queued:
        # a revocation waits for it, so no fetched record is left behind uncommitted.
        self.in_hand = asyncio.Lock()
        self.revoking = False  # from a revocation until the next assignment
        # A loop's extra work in hand (the processor's planned batch), run on revocation.
        self.before_revoke: Callable[[], Awaitable[None]] | None = None
        self.lag: PartitionLag | None = None  # the loop's lag series, told of new assignments
        self._revoke_wait_s = revoke_wait_s
        self._committing: asyncio.Task[None] | None = None
        self._finishing = False  # a revocation holds `in_hand` and is finishing the batch

    @classmethod
    def subscribe(cls, consumer: AIOKafkaConsumer, topic: str, **kwargs: float) -> Commits:
        """Subscribe `consumer` (before it starts) with a new `Commits` as its listener."""
        commits = cls(consumer, **kwargs)
        consumer.subscribe([topic], listener=commits)
        return commits

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Queue the commit of a batch whose side effects are done, after the earlier ones."""
        await self.drain()
        self._committing = asyncio.create_task(_commit(self.consumer, offsets))

    async def drain(self) -> None:
        """Wait for the commit in flight, if any."""
        if self._committing is not None:
            # Shielded: a revocation's bounded wait must not cancel the commit itself.
            await asyncio.shield(self._committing)

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.revoking = True
        # Waits for the batch in hand (normally milliseconds) and commits it: its records were
        # fetched under the old assignment, so their next owner, this consumer included, would
        # read them again. Bounded: a batch retried while a store is down must not hold up the
        # group. Past the bound the rebalance goes on without its commit; the batch finishes
        # here later, its commit fails (partitions moved) and the next owner redoes it,
        # idempotently.
        finishing = asyncio.ensure_future(self._finish_in_hand())
        await asyncio.wait({finishing}, timeout=self._revoke_wait_s)
        if finishing.done():
            finishing.result()
            return
        # Only the wait for `in_hand` is given up: a flush or commit under way runs to its end
        # (cancelled halfway, a batch already written would be planned and written again).
        if not self._finishing:
            finishing.cancel()
        finishing.add_done_callback(_log_failure)
        log.warning("partitions revoked: the batch in hand did not finish within %.1fs; "
                    "the next owner redoes what is uncommitted", self._revoke_wait_s)

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.revoking = False
        if self.lag is not None:
            # Now, not at the loop's next pass: a batch retried meanwhile would leave the lost
            # partitions' lag on this page, frozen, beside their new owner's.
            self.lag.keep_only(assigned)

    async def _finish_in_hand(self) -> None:
        async with self.in_hand:
            self._finishing = True
            try:
                if self.before_revoke is not None:
                    await self.before_revoke()
                await self.drain()
            finally:
                self._finishing = False


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("finishing the batch in hand after a revocation failed: %r",
                    task.exception())


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
    commits: Commits, group: str, batch_max: int, backoff_max_s: float,
) -> None:
    """Consume until `stop` is set; the batch in progress is finished and committed first.

    A batch's commit runs while the next batch is processed (its side effects are already
    done, so only the broker round trip overlaps); commits stay in order, one at a time.
    """
    lag = commits.lag = PartitionLag(consumer, group, settled=commits.drain)
    heap.settle()
    try:
        while not stop.is_set():
            batches = await _fetch(consumer, commits, batch_max)
            async with commits.in_hand:
                records = [r for part in batches.values() for r in part]
                if records:
                    started = time.perf_counter()
                    if not await _until_done(handle, records, stop, group, backoff_max_s,
                                             lag):
                        return  # stopping while a store is down: leave the batch uncommitted
                    BATCH_SECONDS.labels(group).set(time.perf_counter() - started)
                    await commits.commit(next_offsets(batches))
            await lag.record()
    finally:
        lag.clear()
        await commits.drain()


def next_offsets(batches: dict[TopicPartition, list[ConsumerRecord]]) -> dict[TopicPartition, int]:
    """What to commit once the batches' side effects are done: `last offset + 1` per partition."""
    return {tp: part[-1].offset + 1 for tp, part in batches.items()}


async def _fetch(
    consumer: AIOKafkaConsumer, commits: Commits, batch_max: int,
    timeout_ms: int = POLL_TIMEOUT_MS,
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """Up to `batch_max` records: wait for the first, then take whatever else is buffered.

    One getmany() returns a single fetch response's worth (often ~100 records); per-batch
    costs (Redis round trips, the commit) are paid once per batch, so fuller batches matter.
    The caller takes `commits.in_hand` as soon as this returns (nothing awaited in between).
    """
    batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=batch_max)
    count = sum(len(part) for part in batches.values())
    # Not across a revocation: getmany() would wait for the new assignment, with records of
    # the old one held uncommitted while the revocation waits for them.
    while 0 < count < batch_max and not commits.revoking:
        more = await consumer.getmany(timeout_ms=0, max_records=batch_max - count)
        if not more:
            break
        for tp, part in more.items():
            batches.setdefault(tp, []).extend(part)
            count += len(part)
    return batches


async def _until_done(
    handle: Handler, records: Sequence[ConsumerRecord], stop: asyncio.Event,
    group: str, backoff_max_s: float, lag: PartitionLag | None = None,
) -> bool:
    delay = BACKOFF_START_S
    while True:
        try:
            await handle(records)
            return True
        except Exception as exc:  # any failure: retry the same batch, never skip it
            PROCESSING_ERRORS.labels(group, type(exc).__name__).inc()
            log.warning("%s: batch failed (%r); retrying in %.1fs", group, exc, delay)
            if lag is not None:  # stuck: the page must show the backlog growing meanwhile
                await lag.record_stuck()
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

    def __init__(self, consumer: AIOKafkaConsumer, group: str,
                 settled: Callable[[], Awaitable[None]] | None = None) -> None:
        self._consumer = consumer
        self._group = group
        self._shown: set[TopicPartition] = set()
        self._settled = settled  # waits for the commit in flight (`Commits.drain`)

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions whose lag this consumer's page shows."""
        return frozenset(self._shown)

    async def record(self) -> None:
        assigned = self._consumer.assignment()
        self.keep_only(assigned)
        for tp in assigned:
            lag = await self._lag(tp)
            # Unknown (no fetch response since the assignment, or no position yet): keep what
            # this consumer last showed for the partition, if anything, until it is known.
            if lag is not None:
                self._show(tp, lag)

    async def record_stuck(self) -> None:
        """Lag while a batch is stuck (its store down): the loop fetches nothing meanwhile, so
        high watermarks freeze. The broker's end offsets against the committed offsets count
        everything not processed, the batch in hand included. Takes at most
        STUCK_LAG_TIMEOUT_S, and no failure of it stops the retries."""
        assigned = self._consumer.assignment()
        self.keep_only(assigned)
        consumer, parts = self._consumer, list(assigned)
        try:
            async with asyncio.timeout(STUCK_LAG_TIMEOUT_S):
                if self._settled is not None:
                    # The batch before the stuck one is done: counted as lag while its commit
                    # is in flight, the figure would be one batch high.
                    await self._settled()
                ends = await consumer.end_offsets(parts) if parts else {}
                done = await asyncio.gather(*(consumer.committed(tp) for tp in parts))
                never = [tp for tp, offset in zip(parts, done, strict=True) if offset is None]
                # Nothing committed yet: consumed from the beginning.
                starts = await consumer.beginning_offsets(never) if never else {}
                for tp, offset in zip(parts, done, strict=True):
                    position = starts[tp] if offset is None else offset
                    if tp in consumer.assignment():
                        self._show(tp, max(ends[tp] - position, 0))
        except Exception as exc:  # noqa: BLE001 - a gauge must never end the retry loop
            log.info("%s: lag not refreshed while stuck (%r)", self._group, exc)

    def _show(self, tp: TopicPartition, lag: int) -> None:
        CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(lag)
        self._shown.add(tp)

    def clear(self) -> None:
        """Drop every series: a stopped consumer owns no partition."""
        self._drop(set(self._shown))

    def keep_only(self, assigned: Collection[TopicPartition]) -> None:
        """Drop the series of partitions no longer assigned."""
        self._drop(self._shown - set(assigned))

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
