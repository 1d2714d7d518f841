"""Which records of a batch the processor applied before, from the Kafka positions it applied.

Each partition's applied position (the offset after the last record applied, and the newest
record timestamp applied) is written in the same MULTI/EXEC as the batch's features, so it is
exact: a record below it was applied, whatever became of the group's committed offsets (a crash
between the write and the commit, offsets expired after the group sat idle past the broker's
`offsets.retention.minutes`, a reset, a second group reading the topic). Duplicate markers then
only have to catch one event sent twice (a client's retry), for RECO_DEDUP_TTL_S, instead of
every redelivery for the log's whole retention, which cost Redis memory in proportion to the
event rate times that retention.

A topic deleted and recreated under the same name restarts its offsets at 0, and those records
were never applied. Two guards: a record counts as applied only if both its offset and its
timestamp are within what was applied (records written after the recreation are newer), and
only while the partition's log, as the consumer last saw it, reaches the applied offset. A log
that ends before it, with records newer than any applied, was recreated (or truncated): the
partition's position starts afresh. Otherwise the consumer's view is stale (a partition just
revoked, a leader change), and positions decide nothing for that batch, as while the log end
is unknown: markers alone recognise its redeliveries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)

LogEnd = Callable[[int], "int | None"]  # partition -> its log end offset, None if not known


class Positioned(Protocol):
    """A decoded record: where it sits in the topic (partition -1: not read from Kafka)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def log_ms(self) -> int: ...


class Position(NamedTuple):
    """What the processor applied of one partition (or what one batch holds of it)."""

    next_offset: int  # every record below it was applied
    newest_ms: int  # the newest record timestamp among them

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Position | None:
        """None for no position, or one this release cannot read (edited by hand): a batch
        must not be retried forever over it; markers decide, and the batch writes a new one."""
        if not raw:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            next_offset, newest_ms = map(int, text.split(" "))
        except ValueError:
            log.warning("unreadable applied position %r: ignored", text)
            return None
        return cls(next_offset, newest_ms)

    def dump(self) -> str:
        return f"{self.next_offset} {self.newest_ms}"

    def covers(self, record: Positioned) -> bool:
        return record.offset < self.next_offset and record.log_ms <= self.newest_ms

    def merged(self, other: Position) -> Position:
        """Both applied: positions never move back."""
        return Position(max(self.next_offset, other.next_offset),
                        max(self.newest_ms, other.newest_ms))


class Span(NamedTuple):
    """The records of one batch from one partition."""

    first_offset: int
    held: Position  # the position these records alone make


def spans_of(records: Sequence[Positioned]) -> dict[int, Span]:
    """Per partition the records came from (first-seen order), their span."""
    first: dict[int, int] = {}
    end: dict[int, int] = {}
    newest: dict[int, int] = {}
    for r in records:
        p = r.partition
        if p < 0:
            continue
        if p not in first:
            first[p], end[p], newest[p] = r.offset, r.offset + 1, r.log_ms
            continue
        first[p] = min(first[p], r.offset)
        end[p] = max(end[p], r.offset + 1)
        newest[p] = max(newest[p], r.log_ms)
    return {p: Span(first[p], Position(end[p], newest[p])) for p in first}


@dataclass(frozen=True)
class Replays:
    """A batch's records already applied by offset, and each partition's position once the
    batch is written."""

    applied: frozenset[int]  # indices into the records given
    positions: dict[int, Position]


def find_replays(records: Sequence[Positioned], spans: Mapping[int, Span],
                 stored: Mapping[int, Position | None], log_end: LogEnd, topic: str) -> Replays:
    """Which of `records` (whose `spans_of` is `spans`) are within their partition's `stored`
    position, and the positions after them. `stored` holds what Redis (or the batch written
    just before) says per partition of the records."""
    positions: dict[int, Position] = {}
    check: dict[int, Position] = {}  # partitions some of whose records may have been applied
    for partition, span in spans.items():
        position = stored.get(partition)
        end = None if position is None else log_end(partition)
        # The log ends before what was applied: recreated (or truncated) if these records are
        # newer than any applied, else the consumer's view is stale and markers decide.
        behind = position is not None and end is not None and end < position.next_offset
        if behind and span.held.newest_ms > position.newest_ms:
            log.warning("%s[%d]: the log ends at offset %d, before the %d already applied, with "
                        "newer records: the topic was recreated or truncated; its applied "
                        "position starts afresh", topic, partition, end, position.next_offset)
            position = None
        if position is None:
            positions[partition] = span.held
            continue
        positions[partition] = position.merged(span.held)
        if end is not None and not behind and span.first_offset < position.next_offset:
            check[partition] = position
    if not check:
        return Replays(frozenset(), positions)
    applied = frozenset(j for j, r in enumerate(records)
                        if r.partition in check and check[r.partition].covers(r))
    return Replays(applied, positions)


def find_rewrites(records: Sequence[Positioned], spans: Mapping[int, Span],
                  stored: Mapping[int, Position | None], topic: str) -> Replays:
    """`find_replays` for a consumer whose positions are stored with its writes, in one
    database transaction that locks them (the archiver's PostgreSQL): a second copy of the
    consumer (one expelled from the group mid-batch) then reads what the first wrote, and its
    stale batch finds itself applied. It reads no log end, which such a copy no longer knows.

    Every record below a partition's applied offset was applied, so none of them is newer than
    the newest applied: one that is comes from another log (the topic recreated, or truncated),
    and the partition's position starts afresh. That needs the broker's clock (LogAppendTime,
    reco/topics.py): a replay taken for another log is written again, which `event_id` makes
    harmless except for the events of a user erased since, which come back."""
    positions: dict[int, Position] = {}
    check: dict[int, Position] = {}
    for partition, span in spans.items():
        position = stored.get(partition)
        if position is not None and span.first_offset < position.next_offset:
            check[partition] = position
        positions[partition] = span.held if position is None else position.merged(span.held)
    other_log = {r.partition for r in records if r.partition in check
                 and r.offset < check[r.partition].next_offset
                 and r.log_ms > check[r.partition].newest_ms}
    for partition in other_log:
        log.warning("%s[%d]: records below the applied offset %d are newer than any applied: "
                    "the topic was recreated or truncated; its applied position starts afresh",
                    topic, partition, check.pop(partition).next_offset)
        positions[partition] = spans[partition].held
    applied = frozenset(j for j, r in enumerate(records)
                        if r.partition in check and check[r.partition].covers(r))
    return Replays(applied, positions)
