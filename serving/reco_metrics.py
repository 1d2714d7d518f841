"""Prometheus metrics of the recommendation API (names from DESIGN.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("recommendation_requests_total", "Requests served, by endpoint and strategy",
                   ["endpoint", "strategy"])
LATENCY = Histogram(
    "recommendation_latency_seconds", "Time to answer, by endpoint", ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
             0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CACHE_HITS = Counter("recommendation_cache_hits_total", "Responses served from the cache")
CACHE_MISSES = Counter("recommendation_cache_misses_total", "Cache lookups that missed")
CACHE_INELIGIBLE = Counter(
    "recommendation_cache_ineligible_total",
    "Cached responses re-ranked (counted as misses too) because the catalogue changed since "
    "and one of their items no longer passes the rules (e.g. out of stock)")
CACHE_WRITE_ERRORS = Counter("recommendation_cache_write_errors_total",
                             "Cache writes Redis refused (e.g. OOM, READONLY); reads go on")
FALLBACKS = Counter("recommendation_fallbacks_total",
                    "Responses served from the in-process snapshot because Redis was unreachable",
                    ["endpoint"])
SNAPSHOT_ERRORS = Counter("recommendation_snapshot_refresh_errors_total",
                          "Failed background refreshes of popularity / catalogue")
MODEL_AGE = Gauge("model_age_seconds", "Seconds since the served model version was published",
                  ["model"])
