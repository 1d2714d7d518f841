"""The lag gauge of a consumer's /metrics page follows its assignment through rebalances."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from reco.settings import Settings
from streaming import consumer as loop
from streaming.metrics import CONSUMER_LAG
from tests.realtime.conftest import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = {0, 1, 2}


def group_consumer(settings: Settings) -> tuple[AIOKafkaConsumer, loop.Commits]:
    # Frequent heartbeats: a member learns of a rebalance within 100 ms, not 3 s.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=settings.group_processor, enable_auto_commit=False,
                                auto_offset_reset="earliest", heartbeat_interval_ms=100)
    return consumer, loop.Commits.subscribe(consumer, settings.topic_events)


def shown(group: str) -> dict[int, float]:
    """Partition -> lag of the group's kafka_consumer_lag series on this process's page."""
    [metric] = CONSUMER_LAG.collect()
    return {int(s.labels["partition"]): s.value for s in metric.samples
            if s.labels["group"] == group}


def owned(consumer: AIOKafkaConsumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


async def ignore(records: Sequence[ConsumerRecord]) -> None:
    pass


async def test_lag_series_cover_exactly_the_partitions_the_consumer_owns(
    settings: Settings, kafka_topics: dict
) -> None:
    group = settings.group_processor
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for p in sorted(PARTITIONS):
            await producer.send_and_wait(settings.topic_events, b"x", partition=p)
    finally:
        await producer.stop()

    (first, commits), (second, _) = group_consumer(settings), group_consumer(settings)
    stop = asyncio.Event()
    await first.start()
    running = asyncio.create_task(loop.run_batches(first, ignore, stop, commits=commits,
                                                   group=group, batch_max=100,
                                                   backoff_max_s=1.0))
    try:
        await wait_for(lambda: shown(group) == dict.fromkeys(PARTITIONS, 0.0),
                       "lag 0 on the three partitions")

        await second.start()  # joins the group: the partitions are shared out again
        try:
            await wait_for(lambda: owned(second) and owned(first) == PARTITIONS - owned(second),
                           "the rebalance")
            await wait_for(lambda: set(shown(group)) == owned(first),
                           "the first consumer's series to drop the partitions it lost", 10.0)
            # The second consumer's page would show the rest: together exactly the partitions.
            assert set(shown(group)) | owned(second) == PARTITIONS
            assert not set(shown(group)) & owned(second)
        finally:
            await second.stop()  # leaves the group: the first consumer gets all back

        await wait_for(lambda: shown(group) == dict.fromkeys(PARTITIONS, 0.0),
                       "series of the partitions regained")
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await first.stop()
    assert shown(group) == {}  # a stopped consumer owns no partition


async def test_lag_keeps_growing_on_the_page_while_a_batch_is_stuck(
    settings: Settings, kafka_topics: dict
) -> None:
    """A store down: the batch in hand is retried and nothing is fetched, so the watermarks
    the loop sees freeze. The page must still show the backlog (the batch in hand included),
    or the lag alert stays silent while it grows."""
    group = settings.group_processor
    calls = 0

    async def down_after_the_first_batch(records: Sequence[ConsumerRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("store down")

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    consumer, commits = group_consumer(settings)
    stop = asyncio.Event()
    await consumer.start()
    running = asyncio.create_task(loop.run_batches(
        consumer, down_after_the_first_batch, stop, commits=commits, group=group,
        batch_max=100, backoff_max_s=0.2))
    try:
        await producer.send_and_wait(settings.topic_events, b"first", partition=0)
        await wait_for(lambda: shown(group).get(0) == 0.0, "the first batch processed")
        for n in range(5):  # the stuck batch, then more behind it
            await producer.send_and_wait(settings.topic_events, b"%d" % n, partition=0)
            if n == 0:
                await wait_for(lambda: calls > 1, "the stuck batch in hand")
        await wait_for(lambda: shown(group).get(0) == 5.0, "lag 5 while stuck")
        assert calls > 2  # still retrying: nothing was processed meanwhile
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await consumer.stop()
        await producer.stop()


async def test_lag_while_stuck_does_not_count_the_batch_whose_commit_is_in_flight(
    settings: Settings, kafka_topics: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch before the stuck one is done, its commit still on its way to the broker (a
    slow round trip): the figure read while stuck must not count it as lag."""
    from aiokafka.structs import TopicPartition

    monkeypatch.setattr(loop, "STUCK_LAG_TIMEOUT_S", 30.0)  # a slow broker here is no failure
    group, tp = settings.group_processor, TopicPartition(settings.topic_events, 0)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    consumer, commits = group_consumer(settings)
    await consumer.start()
    try:
        for n in range(3):
            await producer.send_and_wait(settings.topic_events, b"%d" % n, partition=0)
        fetched: list[ConsumerRecord] = []
        while len(fetched) < 3:
            fetched += (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
        commit = consumer.commit
        await commit({tp: 1})  # the group's coordinator found: later commits are one round trip

        async def slow_commit(offsets: dict) -> None:
            await asyncio.sleep(1.0)
            await commit(offsets)

        consumer.commit = slow_commit  # type: ignore[method-assign]
        await commits.commit(loop.next_offsets({tp: fetched}))
        await loop.PartitionLag(consumer, group, settled=commits.drain).record_stuck()
        assert shown(group)[0] == 0.0
        assert await consumer.committed(tp) == 3
    finally:
        await commits.drain()
        await consumer.stop()
        await producer.stop()
