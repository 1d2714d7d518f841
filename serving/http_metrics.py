"""Request count and latency of every HTTP route, as a pure ASGI middleware.

Labels are the route template (`/items/{item_id}/similar`, never the concrete path), the method
and the status code, so their cardinality stays bounded. Prometheus adds the `job` label.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["route", "method", "status"])
DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request", ["route", "method"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
             0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
UNMATCHED = "<unmatched>"


class HTTPMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Label children cached per (route, method[, status]): labels() is slow on a hot path.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # path_format: the template without convertors ("{item_id}", not "{item_id:path}")
            route = getattr(scope.get("route"), "path_format", UNMATCHED)
            self._observe(route, scope["method"], status, time.perf_counter() - started)

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REQUESTS.labels(route, method, str(status))
        counter.inc()
        hist = self._histograms.get((route, method))
        if hist is None:
            hist = self._histograms[(route, method)] = DURATION.labels(route, method)
        hist.observe(seconds)
