"""Infrastructure metrics: HTTP route metrics with bounded labels, Redis/PostgreSQL timings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from reco.timing import POSTGRES_QUERY_SECONDS, timed
from serving.http_metrics import HTTPMetrics

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(("consumer", "setting"), [("processor", "RECO_PROCESSOR_METRICS_PORT"),
                                                   ("archiver", "RECO_ARCHIVER_METRICS_PORT")])
def test_a_second_consumer_on_one_host_names_the_metrics_port_to_change(
        tmp_path: Path, consumer: str, setting: str) -> None:
    """Its metrics port taken by a first copy: one line naming the port and the setting, not
    an "Address already in use" traceback (the consumers bind it before any store)."""
    with socket.socket() as first_copy:
        first_copy.bind(("0.0.0.0", 0))
        first_copy.listen()
        port = first_copy.getsockname()[1]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECO_")},
               "PYTHONPATH": str(ROOT), setting: str(port)}
        result = subprocess.run([sys.executable, "-m", "reco.cli", "run", consumer], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"metrics port {port} is already in use (another copy on this host?): give each copy "
        f"its own with {setting}, or -1 for none")
    assert "Traceback" not in result.stderr
