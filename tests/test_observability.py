"""Infrastructure metrics: HTTP route metrics with bounded labels, Redis/PostgreSQL timings."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from reco.timing import POSTGRES_QUERY_SECONDS, timed
from serving.http_metrics import HTTPMetrics


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_http_metrics_label_the_route_template_not_the_path() -> None:
    app = FastAPI()
    app.add_middleware(HTTPMetrics)

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict:
        return {"id": thing_id}

    route = {"route": "/things/{thing_id}", "method": "GET"}
    before_ok = _sample("http_requests_total", **route, status="200")
    before_bad = _sample("http_requests_total", **route, status="422")
    before_unmatched = _sample("http_requests_total", route="<unmatched>", method="GET",
                               status="404")
    before_count = _sample("http_request_duration_seconds_count", **route)
    with TestClient(app) as client:
        assert client.get("/things/1").status_code == 200
        assert client.get("/things/2").status_code == 200
        assert client.get("/things/not-a-number").status_code == 422
        assert client.get("/nowhere/at/all").status_code == 404
    assert _sample("http_requests_total", **route, status="200") == before_ok + 2
    assert _sample("http_requests_total", **route, status="422") == before_bad + 1
    assert _sample("http_requests_total", route="<unmatched>", method="GET",
                   status="404") == before_unmatched + 1
    assert _sample("http_request_duration_seconds_count", **route) == before_count + 3


def test_timed_observes_failures_too() -> None:
    before = _sample("postgres_query_seconds_count", query="test_query")
    with timed(POSTGRES_QUERY_SECONDS, "test_query"):
        pass
    with pytest.raises(RuntimeError), timed(POSTGRES_QUERY_SECONDS, "test_query"):
        raise RuntimeError("boom")
    assert _sample("postgres_query_seconds_count", query="test_query") == before + 2
