"""Infrastructure latency metrics shared by every process: Redis operations, PostgreSQL queries.

Label values are operation / query *names* chosen in code (bounded), never keys or ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5, 5.0)

REDIS_OPERATION_SECONDS = Histogram(
    "redis_operation_seconds", "Duration of a Redis round trip, by operation", ["operation"],
    buckets=_BUCKETS)
POSTGRES_QUERY_SECONDS = Histogram(
    "postgres_query_seconds", "Duration of a PostgreSQL query or batch, by query name", ["query"],
    buckets=_BUCKETS)


@contextmanager
def timed(histogram: Histogram, name: str) -> Iterator[None]:
    """Observe the block's duration under `name` (also when it raises: slow failures count)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(name).observe(time.perf_counter() - started)
