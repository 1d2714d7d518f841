"""`reco status`'s headline figures: their formatting, and queries that name real series."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from reco.cli import app
from reco.settings import get_settings
from reco.stack.headline import HEADLINES, Headline, PrometheusUnavailable, read_headlines
from tests.test_alert_rules import (
    NODE_EXPORTER_SERIES,
    POSTGRES_EXPORTER_SERIES,
    REDIS_EXPORTER_SERIES,
)
from tests.test_dashboard import _family, _series_in, exported_metrics


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (None, "s", "no data"), (float("nan"), "ratio", "no data"), (0.0123, "s", "12.3 ms"),
    (0.682, "ratio", "68.2%"), (3.5 * 2**20, "bytes", "3.5 MiB"),
    (1234.56, "req/s", "1,234.6 req/s"),
    # Small but not none: processing errors at 0.018/s showed as "0.0 msgs/s".
    (0.018, "msgs/s", "0.018 msgs/s"), (0.0004, "ratio", "0.040%"), (0.0, "msgs/s", "0.0 msgs/s"),
    (0.06, "events/s", "0.1 events/s"), (0.00001, "msgs/s", "0.000010 msgs/s"),
])
def test_figures_are_shown_in_their_unit(value: float | None, unit: str, shown: str) -> None:
    assert Headline("x", value, unit).formatted() == shown


def test_every_figure_reads_a_series_the_stack_exports() -> None:
    known = exported_metrics() | {_family(s) for s in REDIS_EXPORTER_SERIES
                                  | POSTGRES_EXPORTER_SERIES | NODE_EXPORTER_SERIES}
    for name, (query, _) in HEADLINES.items():
        if name == "targets up":  # Prometheus' own `up`
            continue
        series = _series_in(query)
        assert series, f"{name}: no series in {query}"
        assert {_family(s) for s in series} <= known, f"{name}: {series} not exported"


Answer = tuple[int, str, str]  # status, content type, body


@pytest.fixture
def prometheus_answering() -> Iterator[Callable[..., str]]:
    """A stand-in HTTP server on a free port answering every query with one fixed response,
    or with `answer(query)`'s when given."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int = 200, content_type: str = "application/json", body: str = "",
              answer: Callable[[str], Answer] | None = None) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                query = parse_qs(urlsplit(self.path).query)["query"][0]
                code, ctype, text = answer(query) if answer else (status, content_type, body)
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "content_type", "body", "reason"), [
    (503, "text/plain", "Service Unavailable", "HTTP 503: Service Unavailable"),
    (200, "text/html", "<html>proxy login</html>", "HTTP 200: <html>proxy login</html>"),
    (200, "application/json", '{"status": "error"}', 'HTTP 200: {"status": "error"}'),
])
def test_an_unusable_prometheus_answer_is_reported_not_raised(
        prometheus_answering, status: int, content_type: str, body: str, reason: str) -> None:
    url = prometheus_answering(status, content_type, body)
    with pytest.raises(PrometheusUnavailable, match=re.escape(reason)):
        read_headlines(url)


def test_status_without_headlines_says_why(prometheus_answering, tmp_path, monkeypatch) -> None:
    url = prometheus_answering(503, "text/plain", "Service Unavailable")
    monkeypatch.setenv("RECO_PROMETHEUS_PORT", url.rsplit(":", 1)[1])
    monkeypatch.setenv("RECO_STATE_DIR", str(tmp_path))  # no stack: every component stopped
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["status"])
    finally:
        get_settings.cache_clear()
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert result.exit_code == 1
    assert ("(no headline figures: Prometheus HTTP 503: Service Unavailable)"
            in " ".join(result.output.split()))


def test_one_failed_query_costs_only_its_own_figure(prometheus_answering) -> None:
    refused = HEADLINES["Redis memory"][0]

    def answer(query: str) -> Answer:
        if query == refused:  # Prometheus' own shape for a query it refuses
            return 400, "application/json", (
                '{"status":"error","errorType":"bad_data","error":"parse error"}')
        return 200, "application/json", (
            '{"status":"success","data":{"resultType":"vector",'
            '"result":[{"metric":{},"value":[1764000000,"0.5"]}]}}')

    figures = {f.name: f for f in read_headlines(prometheus_answering(answer=answer))}
    assert set(figures) == set(HEADLINES)
    assert figures["Redis memory"].value is None
    assert figures["Redis memory"].formatted().startswith("error: HTTP 400: ")
    assert "parse error" in figures["Redis memory"].formatted()
    others = [f for name, f in figures.items() if name != "Redis memory"]
    assert all(f.value == 0.5 and f.error is None for f in others)
