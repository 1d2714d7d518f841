"""Headline figures of the running platform, read from the local Prometheus."""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

# name -> (PromQL, unit). Windows are short so a demo run shows up within a minute.
HEADLINES: dict[str, tuple[str, str]] = {
    "ingest rate": ("sum(rate(events_ingested_total[1m]))", "events/s"),
    "ingest p99": (
        'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket'
        '{job="ingest"}[5m])))', "s"),
    "recommendation rate": ("sum(rate(recommendation_requests_total[1m]))", "req/s"),
    "recommendation p99": (
        "histogram_quantile(0.99, sum by (le) (rate(recommendation_latency_seconds_bucket[5m])))",
        "s"),
    "cache hit ratio": (
        "sum(increase(recommendation_cache_hits_total[15m])) / (sum(increase("
        "recommendation_cache_hits_total[15m])) + sum(increase("
        "recommendation_cache_misses_total[15m])))", "ratio"),
    # max per partition first: during a rebalance two copies' pages can both show a partition
    "processor lag": ('sum(max by (topic, partition) ('
                      'kafka_consumer_lag{group=~".*processor.*"}))', "messages"),
    "archiver lag": ('sum(max by (topic, partition) ('
                     'kafka_consumer_lag{group=~".*archiver.*"}))', "messages"),
    "HTTP 5xx ratio": (
        '(sum(rate(http_requests_total{status=~"5.."}[5m])) or vector(0))'
        ' / sum(rate(http_requests_total[5m]))',
        "ratio"),
    "processing errors": ("sum(rate(event_processing_errors_total[5m]))", "msgs/s"),
    "targets up": ("sum(up) / count(up)", "ratio"),
    # Grows with the event rate: features, lists, cache and the duplicate markers.
    "Redis memory": ("sum(redis_memory_used_bytes)", "bytes"),
    # The event archive (append-only, so it only grows), MLflow's and Airflow's databases
    "PostgreSQL size": ('sum(pg_database_size_bytes{datname!~"template.*|postgres"})', "bytes"),
    # The fullest disk: Kafka's log, PostgreSQL's data and Redis's append-only file share it.
    "disk space left": ('min(node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs"}'
                        ' / node_filesystem_size_bytes{fstype!~"tmpfs|ramfs"})', "ratio"),
}


@dataclass(frozen=True)
class Headline:
    name: str
    value: float | None
    unit: str
    error: str | None = None  # why Prometheus gave no value for this figure's query

    def formatted(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.value is None or self.value != self.value:  # no data yet, or NaN (0/0)
            return "no data"
        if self.unit == "s":
            return f"{self.value * 1000:.1f} ms"
        if self.unit == "ratio":
            return f"{_one_decimal(self.value * 100)}%"
        if self.unit == "bytes":
            return f"{self.value / 2**20:,.1f} MiB"
        return f"{_one_decimal(self.value)} {self.unit}"


def _one_decimal(value: float) -> str:
    """One decimal, but never a rate or share above zero as 0.0: errors at 0.018 msgs/s, or
    a 0.04% 5xx ratio, read as none."""
    if 0 < abs(value) < 0.05:  # two significant digits, never 1e-05
        return f"{value:.{1 - math.floor(math.log10(abs(value)))}f}"
    return f"{value:,.1f}"


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer a query usefully (unreachable, an error status, not its JSON)."""


class PrometheusUnreachable(PrometheusUnavailable):
    """No answer at all: every other query would wait out its timeout too."""


def _query(client: httpx.Client, query: str) -> float | None:
    """One instant query's first value; None when it has no data yet."""
    try:
        response = client.get("/api/v1/query", params={"query": query})
    except httpx.HTTPError as exc:
        raise PrometheusUnreachable(f"not reachable: {exc}") from exc
    try:
        # Starting, or behind a proxy, it can answer 503 with a text body.
        response.raise_for_status()
        result = response.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (httpx.HTTPStatusError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise PrometheusUnavailable(
            f"HTTP {response.status_code}: {response.text.strip()[:200]}") from exc


def _headline(client: httpx.Client, name: str, query: str, unit: str) -> Headline:
    try:
        return Headline(name, _query(client, query), unit)
    except PrometheusUnreachable:
        raise
    except PrometheusUnavailable as exc:  # e.g. one query refused: the others still count
        return Headline(name, None, unit, error=str(exc))


def read_headlines(prometheus_url: str, timeout_s: float = 2.0) -> list[Headline]:
    """One instant query per figure; a figure without data yet, or whose query failed, is
    reported as such. Raises PrometheusUnavailable when no figure could be read."""
    with httpx.Client(base_url=prometheus_url, timeout=timeout_s) as client:
        figures = [_headline(client, name, query, unit)
                   for name, (query, unit) in HEADLINES.items()]
    if all(figure.error is not None for figure in figures):
        raise PrometheusUnavailable(figures[0].error)
    return figures
