"""Consumer-group lag measured from outside the consumers (committed offset vs log end)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def group_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> messages not yet committed by `group` (a partition it never committed counts
    from the start of the log)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:
        (described,) = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        if not partitions:
            raise LookupError(f"topic {topic!r} has no partitions (does it exist?)")
        ends = await probe.end_offsets(partitions)
        starts = await probe.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await probe.stop()
        await admin.close()
    lag = {}
    for tp in partitions:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        lag[tp.partition] = max(ends[tp] - position, 0)
    return lag


def wait_for_zero_lag(bootstrap: str, groups: list[str], topic: str, timeout_s: float,
                      on_poll=None) -> dict[str, int]:
    """Block until every group has committed everything on `topic`; returns the final totals."""
    deadline = time.monotonic() + timeout_s
    while True:
        totals = {g: sum(asyncio.run(group_lag(bootstrap, g, topic)).values()) for g in groups}
        if on_poll is not None:
            on_poll(totals)
        if all(v == 0 for v in totals.values()):
            return totals
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumers still behind after {timeout_s:.0f}s: {totals}")
        time.sleep(1.0)
