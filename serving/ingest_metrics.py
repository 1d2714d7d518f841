"""Prometheus metrics of the ingest API (names from DESIGN.md)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from reco.events import EVENT_TYPES, Event

EVENTS_INGESTED = Counter(
    "events_ingested_total", "Events acknowledged by the broker", ["event_type"])
PUBLISHED = Counter("kafka_messages_published_total", "Messages acknowledged by the broker")
PUBLISH_FAILURES = Counter(
    "kafka_publish_failures_total", "Requests answered 503 because the broker did not ack")
REJECTED = Counter("ingest_requests_rejected_total", "Requests refused", ["status"])
ITEMS_UPSERTED = Counter("catalogue_items_upserted_total", "Catalogue items upserted")
USER_ERASURES = Counter("user_erasures_requested_total", "User erasures queued on the events topic")
ITEMS_DELETED = Counter("catalogue_items_deleted_total", "Catalogue items deleted")
MIRRORS_OWED = Gauge("catalogue_mirrors_owed",
                     "Catalogue items stored in PostgreSQL that Redis has not taken yet")

# Label children resolved once: a labels() lookup per request costs more than the increment.
_BY_TYPE = {t: EVENTS_INGESTED.labels(t) for t in EVENT_TYPES}
_REJECTED = {s: REJECTED.labels(str(s)) for s in (408, 413, 415, 422, 503)}


def count_published(events: Sequence[Event]) -> None:
    if len(events) == 1:
        _BY_TYPE[events[0].event_type].inc()
    else:
        for event_type, n in Tally(e.event_type for e in events).items():
            _BY_TYPE[event_type].inc(n)
    PUBLISHED.inc(len(events))


def count_rejected(status: int) -> None:
    _REJECTED[status].inc()
