"""Prometheus metrics of the ingest API (names from DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from reco.events import EVENT_TYPES, Event

PUBLISH_FAILURES = Counter(
    "kafka_publish_failures_total", "Requests answered 503 because the broker did not ack")
REJECTED = Counter("ingest_requests_rejected_total", "Requests refused", ["status"])
ITEMS_UPSERTED = Counter("catalogue_items_upserted_total", "Catalogue items upserted")

# Label children resolved once: a labels() lookup per request costs more than the increment.
_REJECTED = {s: REJECTED.labels(str(s)) for s in (413, 422, 503)}


class _Published(Collector):
    """`events_ingested_total{event_type}` and `kafka_messages_published_total` as plain ints,
    read at scrape time: two Counter.inc() (a lock each) cost more than the rest of the
    accounting of a single-event request. Only the event loop's thread increments them."""

    def __init__(self) -> None:
        self.by_type = dict.fromkeys(EVENT_TYPES, 0)
        self.messages = 0

    def collect(self) -> Iterator[Metric]:
        ingested = CounterMetricFamily("events_ingested", "Events acknowledged by the broker",
                                       labels=["event_type"])
        for event_type, n in self.by_type.items():
            ingested.add_metric([event_type], n)
        yield ingested
        yield CounterMetricFamily("kafka_messages_published",
                                  "Messages acknowledged by the broker", value=self.messages)


_PUBLISHED = _Published()
REGISTRY.register(_PUBLISHED)


def count_published(events: Sequence[Event]) -> None:
    by_type = _PUBLISHED.by_type
    for e in events:
        by_type[e.event_type] += 1
    _PUBLISHED.messages += len(events)


def count_rejected(status: int) -> None:
    _REJECTED[status].inc()
