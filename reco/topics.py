"""Kafka topics of the platform and their creation (idempotent)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from reco.settings import Settings

log = logging.getLogger(__name__)


class TopicCreationFailed(RuntimeError):
    """The broker refused to create a topic; the message names it and gives the broker's reason."""


def platform_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions (events are keyed by user_id: partitions are the unit of scale)."""
    return {settings.topic_events: settings.topic_partitions, settings.topic_dlq: 1}


def replication_factor(configured: int | None, brokers: int) -> int:
    """The configured factor, else 3 (a broker can fail without losing acknowledged events) on
    clusters that have 3 brokers, else every broker there is (one on the local stack)."""
    return configured if configured is not None else min(3, brokers)


def creation_errors(topic_errors: Sequence[tuple]) -> list[str]:
    """"topic: reason" for each topic of a CreateTopics response the broker refused. The
    broker answers per topic (aiokafka raises nothing); one that already exists is fine:
    another process may create it at the same moment."""
    failed = []
    for topic, code, *message in topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        reason = message[0] if message and message[0] else for_code(code).__name__
        failed.append(f"{topic}: {reason} (error code {code})")
    return failed


async def _start_admin(bootstrap: str, timeout_s: float) -> AIOKafkaAdminClient:
    """An admin client, waiting for the broker to accept connections first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partitions of existing topics (metadata can lag a creation: only topics created before
    this call are asked about)."""
    if not names:
        return {}
    counts = {}
    for topic in await admin.describe_topics(names):
        if topic["error_code"]:  # e.g. another process created it a moment ago
            reason = for_code(topic["error_code"]).__name__
            raise TopicCreationFailed(f"the broker could not describe {topic['topic']}: "
                                      f"{reason} (error code {topic['error_code']}); run "
                                      "again in a moment")
        counts[topic["topic"]] = len(topic["partitions"])
    return counts


async def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 60.0,
                        replication: int | None = None,
                        add_partitions: bool = False) -> dict[str, int]:
    """Create missing topics (`replication`: see `replication_factor`), and with
    `add_partitions` grow existing ones that have fewer partitions than asked; raise
    TopicCreationFailed naming each topic the broker refused and why. Returns each topic's
    partitions as they now are: Kafka never removes partitions, and without `add_partitions`
    an existing topic keeps its count."""
    admin = await _start_admin(bootstrap, timeout_s)
    try:
        created = await _create_missing(admin, topics, replication)
        await asyncio.to_thread(_use_broker_time, bootstrap, [t for t in topics
                                                              if t not in created], timeout_s)
        counts = {name: topics[name] for name in created}
        counts |= await _partition_counts(admin, [t for t in topics if t not in created])
        grow = {name: wanted for name, wanted in topics.items()
                if add_partitions and counts[name] < wanted}
        if grow:
            try:  # aiokafka raises the first topic's refusal
                await admin.create_partitions({name: NewPartitions(total_count=wanted)
                                               for name, wanted in grow.items()})
            except KafkaError as exc:
                raise TopicCreationFailed(f"the broker refused to add partitions: {exc}") from exc
            counts |= grow
        return {name: counts[name] for name in topics}  # in the order asked
    finally:
        await admin.close()


# Records carry the broker's clock, not the producer's: the processor takes records below its
# applied offset, but newer than any it applied, for those of a topic deleted and made again
# (streaming/applied_positions.py); with the producers' clocks, an ingest host running slow
# made them look older, and they were skipped as applied.
TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}


async def _create_missing(admin: AIOKafkaAdminClient, topics: dict[str, int],
                          replication: int | None) -> set[str]:
    """The topics created now (another process creating one at the same moment: not ours)."""
    existing = set(await admin.list_topics())
    created: set[str] = set()
    if topics.keys() - existing:
        brokers = len((await admin.describe_cluster())["brokers"])
        factor = replication_factor(replication, brokers)
        missing = [NewTopic(name=name, num_partitions=parts, replication_factor=factor,
                            topic_configs=TOPIC_CONFIGS)
                   for name, parts in topics.items() if name not in existing]
        response = await admin.create_topics(missing)
        failed = creation_errors(response.topic_errors)
        if failed:
            raise TopicCreationFailed("the broker refused to create " + "; ".join(failed))
        created = {topic for topic, code, *_ in response.topic_errors if code == 0}
    return created


def _use_broker_time(bootstrap: str, names: list[str], timeout_s: float) -> None:
    """Give existing topics `TOPIC_CONFIGS` (those of earlier releases kept the producers'
    clock), by an incremental change: their other settings stay as the operator set them."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
        stale = [res.name for res, future in described.items()
                 if any(future.result(timeout_s)[key].value != value
                        for key, value in TOPIC_CONFIGS.items())]
        if not stale:
            return
        changes = [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in TOPIC_CONFIGS.items()]) for name in stale]
        for future in admin.incremental_alter_configs(changes).values():
            future.result(timeout_s)
    except KafkaException as exc:
        raise TopicCreationFailed(f"the broker refused to set {TOPIC_CONFIGS} on "
                                  f"{', '.join(names)}: {exc}") from exc
    log.warning("%s: records now carry the broker's clock (%s)", ", ".join(stale),
                TOPIC_CONFIGS)


def partition_mismatches(wanted: dict[str, int], counts: dict[str, int]) -> list[str]:
    """A sentence per topic whose partitions differ from the settings', saying what to do."""
    out = []
    for name, want in wanted.items():
        have = counts[name]
        if have < want:
            out.append(f"{name} has {have} partitions, the settings ask for {want}: run "
                       f"`reco topics create --add-partitions` to add them (users' events "
                       f"then move partitions once: order per user holds again for events "
                       f"produced after the change)")
        elif have > want:
            out.append(f"{name} has {have} partitions, the settings ask for {want}: Kafka "
                       f"cannot remove partitions, so it keeps {have}")
    return out
