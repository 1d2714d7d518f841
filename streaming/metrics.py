"""Prometheus metrics of the streaming consumers (names from DESIGN.md)."""

from __future__ import annotations

import errno
import logging

from prometheus_client import Counter, Gauge, start_http_server

from reco.settings import ConfigError

log = logging.getLogger(__name__)

EVENTS_PROCESSED = Counter(
    "events_processed_total", "Events applied to the Redis features", ["event_type"])
EVENTS_DUPLICATE = Counter(
    "events_duplicate_total", "Redelivered events skipped by the processor (already applied)")
PROCESSING_ERRORS = Counter(
    "event_processing_errors_total",
    "Messages that could not be processed (invalid -> DLQ) or store errors retried",
    ["consumer", "reason"])
DLQ_PUBLISHED = Counter("dlq_messages_published_total", "Messages sent to the dead-letter topic")
EVENTS_UNSCORED = Counter(
    "events_popularity_unscored_total",
    "Events beyond the popularity landmark's range (move the landmark, see reco/features.py)")
POPULARITY_PRUNED = Counter(
    "popularity_pruned_total",
    "Faded members removed from the popularity sets (streaming/popularity_prune.py)", ["set"])
EVENTS_ARCHIVED = Counter(
    "events_archived_total", "Events written to PostgreSQL (inserted, not counting duplicates)")
USERS_ERASED = Counter(
    "users_erased_total", "User erasures applied, by consumer (events in PostgreSQL, features in "
    "Redis)", ["consumer"])
CONSUMER_LAG = Gauge(
    "kafka_consumer_lag", "Messages behind the partition's high watermark",
    ["group", "topic", "partition"])
BATCH_SECONDS = Gauge(
    "consumer_last_batch_seconds", "Duration of the last batch's side effects", ["group"])


def serve_metrics(port: int, group: str, setting: str) -> None:
    """Expose /metrics on `port` (0 picks a free port); a negative port disables it.

    `setting` is the RECO_* variable that gave the port, named if it is taken."""
    # Export the error counter at 0 from the start: "no errors" is data, a missing series is not.
    PROCESSING_ERRORS.labels(group, "invalid_message")
    if port < 0:
        return
    try:
        server, _ = start_http_server(port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Typically a second copy on the same host, which would otherwise die on a traceback.
        raise ConfigError(f"metrics port {port} is already in use (another copy on this host?): "
                          f"give each copy its own with {setting}, or -1 for none") from None
    log.info("metrics on port %d", server.server_port)
