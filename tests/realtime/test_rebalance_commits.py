"""A rebalance first commits the work a consumer has in hand: the partitions' next owner redoes
nothing (both batch loops, on the real broker, PostgreSQL and Redis), and a batch stuck on a
store that is down does not hold up the group."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from reco import keys
from reco.settings import Settings
from streaming import consumer as loop
from streaming.archiver import Archiver
from streaming.feature_store import AppliedBatch, FeatureStore
from streaming.overlap import run_overlapped
from streaming.processor import Processor, log_end_of
from streaming.redis_pipe import RedisPipe
from tests.realtime.conftest import wait_for
from tests.reliability.conftest import make_events, produce_fast, seen_count

pytestmark = pytest.mark.integration

N = 600
BATCH = 20  # small batches: the held one is early in the stream
HELD = 3  # the first member's third batch (its third write, for the processor) is held
# How long the held batch stays unfinished once the revocation began: the rebalance waits for
# it (up to REVOKE_WAIT_S, 3 s). Without the commit on revocation the rebalance does not wait
# (heartbeats every 100 ms), the batch's late commit fails and its records are redelivered.
HOLD_S = 0.5


class Gate:
    """Holds the `at`-th pass until released; says when it holds it."""

    def __init__(self, at: int) -> None:
        self.at, self.passes = at, 0
        self.holding, self.released = asyncio.Event(), asyncio.Event()

    async def through(self) -> None:
        self.passes += 1
        if self.passes == self.at:
            self.holding.set()
            await self.released.wait()


class Member:
    """One copy of a consumer: a member of the group running a batch loop as a task."""

    def __init__(self, settings: Settings, group: str, **commits: float) -> None:
        # Frequent heartbeats: a member learns of a rebalance within 100 ms, not 3 s.
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                         group_id=group, enable_auto_commit=False,
                                         auto_offset_reset="earliest", heartbeat_interval_ms=100)
        self.commits = loop.Commits.subscribe(self.consumer, settings.topic_events, **commits)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, run: Callable[[Member], Awaitable[None]]) -> None:
        await self.consumer.start()  # returns once the group has assigned partitions
        self.task = asyncio.create_task(run(self))

    def owned(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    async def close(self) -> None:
        self.stop.set()
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, 30)  # re-raises a loop's crash
        finally:
            await self.consumer.stop()


async def produce_events(settings: Settings, n: int) -> list[dict]:
    events = make_events(n)
    await produce_fast(settings, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    return events


async def rebalance_while_held(first: Member, second: Member, gate: Gate,
                               run: Callable[[Member], Awaitable[None]]) -> None:
    """While the first member holds a batch: the second joins; once the first member's
    partitions are being revoked, the batch is let go HOLD_S later."""
    await wait_for(gate.holding.is_set, "a batch held mid-stream")
    joining = asyncio.create_task(second.start(run))
    # With the commit on revocation the rebalance waits for the held batch; without it, the
    # rebalance would complete first (and `revoking` be over before it is seen).
    await wait_for(lambda: first.commits.revoking or joining.done(), "the revocation", 20.0)
    await asyncio.sleep(HOLD_S)
    gate.released.set()
    await asyncio.wait_for(joining, 30)
    assert second.owned() and first.owned() | second.owned() == {0, 1, 2}


def twice(items: list[Any]) -> list[Any]:
    return sorted(item for item, count in Counter(items).items() if count > 1)


async def test_archiver_rebalance_redoes_nothing_it_archived(
    settings: Settings, pg: psycopg.Connection, kafka_topics: dict
) -> None:
    """The archiver loop holds a batch (inserted, not yet committed) while a second copy joins:
    the revocation waits for it and commits it, so no offset is handled twice."""
    await produce_events(settings, N)
    handled: list[tuple[int, int]] = []
    gate = Gate(HELD)
    archivers: list[Archiver] = []

    def archiving(held: Gate | None) -> Callable[[Member], Awaitable[None]]:
        archiver = Archiver(settings)
        archivers.append(archiver)

        async def handle(records: Sequence[ConsumerRecord]) -> None:
            await archiver(records)
            if held is not None:
                await held.through()
            handled.extend((r.partition, r.offset) for r in records)

        def run(member: Member) -> Awaitable[None]:
            return loop.run_batches(member.consumer, handle, member.stop, commits=member.commits,
                                    group=settings.group_archiver, batch_max=BATCH,
                                    backoff_max_s=1.0)
        return run

    first = Member(settings, settings.group_archiver)
    second = Member(settings, settings.group_archiver)
    try:
        await first.start(archiving(gate))
        await rebalance_while_held(first, second, gate, archiving(None))
        await wait_for(lambda: len(set(handled)) == N, "every offset handled")
    finally:
        gate.released.set()
        await first.close()
        await second.close()
        for archiver in archivers:
            await archiver.close()

    assert twice(handled) == []
    assert len(handled) == N
    assert pg.execute("SELECT count(*) FROM events").fetchone() == (N,)


class HeldWriter(RedisPipe):
    """The processor's write connection; `gate` can hold one of its MULTI/EXECs (batch writes)."""

    def __init__(self, url: str, gate: Gate | None) -> None:
        super().__init__(url)
        self.gate = gate

    async def execute(self, commands: Any, transaction: bool = False) -> list[Any]:
        if transaction and self.gate is not None:
            await self.gate.through()
        return await super().execute(commands, transaction)


class Recording(Processor):
    """The processor, noting the events it applied and the deliveries it found already applied
    (a redelivered event: a duplicate)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.applied: list[str] = []
        self.duplicates = 0

    async def finish(self, result: AppliedBatch | None, bad: list) -> None:
        if result is not None:
            self.applied.extend(e.event_id for e in result.applied)
            self.duplicates += result.duplicates
        await super().finish(result, bad)


async def test_processor_rebalance_redoes_nothing_it_planned_or_wrote(
    settings: Settings, redis_client: redis.Redis, kafka_topics: dict
) -> None:
    """The overlapped processor loop holds a batch's write (the next batch planned, pending)
    while a second copy joins: the revocation lets the write finish, writes the pending batch
    too, and commits both, so the next owner finds no event already applied."""
    events = await produce_events(settings, N)
    gate = Gate(HELD)
    dlq = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    pipes: list[RedisPipe] = []
    processors: list[Recording] = []

    def processing(held: Gate | None) -> Callable[[Member], Awaitable[None]]:
        reader, writer = RedisPipe(settings.redis_url), HeldWriter(settings.redis_url, held)
        pipes.extend((reader, writer))
        processor = Recording(FeatureStore(reader, settings, writer), dlq, settings)
        processors.append(processor)

        def run(member: Member) -> Awaitable[None]:
            # As the processor runs: its applied positions trusted where its consumer sees the log
            processor.store.log_end = log_end_of(member.consumer, settings.topic_events)
            return run_overlapped(member.consumer, processor, member.stop, commits=member.commits,
                                  group=settings.group_processor, batch_max=BATCH,
                                  backoff_max_s=1.0)
        return run

    await dlq.start()
    first = Member(settings, settings.group_processor)
    second = Member(settings, settings.group_processor)
    try:
        await first.start(processing(gate))
        await rebalance_while_held(first, second, gate, processing(None))
        await wait_for(lambda: sum(len(p.applied) for p in processors) >= N, "every event")
    finally:
        gate.released.set()
        await first.close()
        await second.close()
        await dlq.stop()
        for pipe in pipes:
            await pipe.close()

    applied = [event_id for p in processors for event_id in p.applied]
    assert sorted(applied) == sorted(e["event_id"] for e in events)
    assert [p.duplicates for p in processors] == [0, 0]
    assert seen_count(redis_client, events) == N
    # Each partition's applied position reached its end, through both owners' writes.
    ends = [redis_client.get(keys.applied_position(settings.topic_events, p)) for p in range(3)]
    assert sum(int(end.split(" ")[0]) for end in ends) == N


async def test_a_batch_stuck_on_a_store_that_is_down_does_not_hold_up_the_group(
    settings: Settings, kafka_topics: dict
) -> None:
    """The revocation waits for the batch in hand only so long: past that the rebalance goes
    on without its commit, and the next owner redoes it (every offset handled at least once).
    The stuck member's page drops the lag of the partitions it lost at once."""
    n = 300
    await produce_events(settings, n)
    handled: dict[str, list[tuple[int, int]]] = {"first": [], "second": []}
    failures = 0
    store_down = False

    def handling(name: str) -> Callable[[Member], Awaitable[None]]:
        async def handle(records: Sequence[ConsumerRecord]) -> None:
            nonlocal failures, store_down
            # The first member goes down once its page shows the lag of all three partitions.
            if name == "first" and (store_down or len(first.commits.lag.partitions) == 3):
                store_down = True
                failures += 1
                raise ConnectionRefusedError("the store is down")
            handled[name].extend((r.partition, r.offset) for r in records)

        def run(member: Member) -> Awaitable[None]:
            return loop.run_batches(member.consumer, handle, member.stop, commits=member.commits,
                                    group=settings.group_archiver, batch_max=BATCH,
                                    backoff_max_s=0.5)
        return run

    first = Member(settings, settings.group_archiver, revoke_wait_s=0.5)
    second = Member(settings, settings.group_archiver)
    try:
        await first.start(handling("first"))
        await wait_for(lambda: failures >= 2, "the first member retrying its batch")
        handled_before = len(handled["first"])
        await asyncio.wait_for(second.start(handling("second")), 20)  # the rebalance completed
        # The first member's side of it ends with its assignment callback, a moment later.
        await wait_for(lambda: not first.commits.revoking, "the first member's new assignment")
        # While the first was still stuck: its page shows only what it kept.
        assert second.owned() and len(handled["first"]) == handled_before
        assert {tp.partition for tp in first.commits.lag.partitions} <= first.owned()
        store_down = False
        await wait_for(lambda: len(set(handled["first"] + handled["second"])) == n,
                       "every offset handled")
    finally:
        await first.close()
        await second.close()
    assert len(set(handled["first"] + handled["second"])) == n
