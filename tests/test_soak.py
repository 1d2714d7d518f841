"""The soak's measurements and verdict (benchmarks/soak_checks.py): lag probes on real
Prometheus pages, the verdict's PASS / FAIL / INCOMPLETE, finding a service's process by its
port, and counting the run's archived events in a real PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import psutil
import psycopg
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PromCounter

from benchmarks.soak_checks import (
    NoLag,
    NotMeasured,
    Recorder,
    count_archived,
    lag,
    parse_lag,
    service_process,
    status,
    verdict,
    verdict_line,
)

GROUP = "reco-processor"


def consumer_page(lags: dict[tuple[str, int], float]) -> str:
    """A consumer's /metrics as prometheus_client writes it; `lags` maps (group, partition) to
    lag. No entries: the gauge's HELP and TYPE lines only (a consumer not assigned yet)."""
    registry = CollectorRegistry()
    gauge = Gauge("kafka_consumer_lag", "Messages behind", ["group", "topic", "partition"],
                  registry=registry)
    PromCounter("events_processed_total", "Events", ["event_type"],
                registry=registry).labels("view").inc(7)
    for (group, partition), value in lags.items():
        gauge.labels(group, "events", str(partition)).set(value)
    return generate_latest(registry).decode()


def client_for(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_parse_lag_sums_the_groups_partitions_only() -> None:
    page = consumer_page({(GROUP, 0): 3, (GROUP, 1): 4, (GROUP, 2): 0, ("event-archiver", 0): 50})
    assert parse_lag(page, GROUP) == 7.0
    assert parse_lag(page, "event-archiver") == 50.0


@pytest.mark.parametrize("page", [
    consumer_page({}),  # the gauge is declared, no partition assigned yet
    consumer_page({("event-archiver", 0): 0}),  # another consumer's page
    "",
], ids=["unassigned", "other-group", "empty"])
def test_parse_lag_without_the_groups_series_is_no_figure(page: str) -> None:
    with pytest.raises(NoLag, match="no kafka_consumer_lag series of group 'reco-processor'"):
        parse_lag(page, GROUP)


async def test_lag_reads_a_page_with_lag_lines() -> None:
    page = consumer_page({(GROUP, 0): 2, (GROUP, 1): 5})
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text=page)

    unanswered: Counter[str] = Counter()
    async with client_for(handler) as client:
        assert await lag(client, "http://proc:9101", GROUP, unanswered) == 7.0
    assert seen == ["http://proc:9101/metrics"]
    assert unanswered == Counter()


async def test_a_page_without_lag_lines_is_an_unanswered_probe() -> None:
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(200, text=consumer_page({}))) as client:
        assert await lag(client, "http://proc:9101", GROUP, unanswered) is None
        assert await lag(client, "http://proc:9101", GROUP, unanswered) is None
    assert unanswered == Counter({
        "http://proc:9101/metrics: no kafka_consumer_lag series of group 'reco-processor'": 2})


async def test_an_http_error_page_is_an_unanswered_probe() -> None:
    # An error page that happens to carry lag lines is still not an answer.
    page = consumer_page({(GROUP, 0): 0})
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(503, text=page)) as client:
        assert await lag(client, "http://proc:9101", GROUP, unanswered) is None
    assert unanswered == Counter({"http://proc:9101/metrics: HTTP 503": 1})


async def test_no_connection_is_an_unanswered_probe() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    unanswered: Counter[str] = Counter()
    async with client_for(refuse) as client:
        assert await lag(client, "http://proc:9101", GROUP, unanswered) is None
    assert unanswered == Counter({"http://proc:9101/metrics: ConnectError": 1})


async def test_an_unreadable_lag_sample_is_an_unanswered_probe() -> None:
    page = 'kafka_consumer_lag{group="reco-processor",partition="0",topic="events"} many\n'
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(200, text=page)) as client:
        assert await lag(client, "http://proc:9101", GROUP, unanswered) is None
    (reason,) = unanswered
    assert reason.startswith("http://proc:9101/metrics: unreadable sample")


async def probed(processor_page: str, archiver_page: str, samples: int = 3) -> Recorder:
    """A Recorder whose lag samples come from probing these two pages, as the soak does."""
    pages = {"proc": processor_page, "arch": archiver_page}
    rec = Recorder(start=0.0)
    async with client_for(lambda r: httpx.Response(200, text=pages[r.url.host])) as client:
        for n in range(samples):
            rec.lag.append((5.0 * n,
                            await lag(client, "http://proc", GROUP, rec.unanswered),
                            await lag(client, "http://arch", "event-archiver", rec.unanswered)))
    rec.acked_ids = [str(uuid.uuid4()) for _ in range(10)]
    return rec


MET = {"lag_drained": True, "archived": 10}
GROWTH = {"ingest": 1.0, "recommendations": 0.5, "processor": 0.2, "archiver": 0.1}


async def test_verdict_passes_on_answered_lag_under_the_bound() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert all(ok is True for ok in checks.values()), checks
    assert status(checks) == "PASS"


async def test_verdict_fails_when_a_consumers_page_has_no_lag_lines() -> None:
    # Read as lag 0, this page used to pass "processor_lag_bounded" without evidence.
    rec = await probed(consumer_page({}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    failed = {name for name, ok in checks.items() if ok is not True}
    assert failed == {"processor_lag_probes_answered", "processor_lag_bounded"}
    assert status(checks) == "FAIL"
    assert rec.unanswered == Counter(
        {"http://proc/metrics: no kafka_consumer_lag series of group 'reco-processor'": 3})


async def test_verdict_fails_on_lag_over_the_bound() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 10}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert {name for name, ok in checks.items() if ok is not True} == {"archiver_lag_bounded"}


async def test_an_events_table_out_of_reach_makes_the_verdict_incomplete() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, {"lag_drained": True, "archived": None}, bound=10)
    assert checks["archived_equals_acked"] is None
    assert [n for n, ok in checks.items() if ok is not True] == ["archived_equals_acked"]
    assert status(checks) == "INCOMPLETE"
    assert verdict_line(checks).startswith(
        "Verdict: INCOMPLETE (not measured: archived_equals_acked); no_errors yes, ")
    assert "archived_equals_acked NOT MEASURED, rss_growth_under_10pct yes." in verdict_line(
        checks)


async def test_archived_short_of_acked_fails() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, {"lag_drained": True, "archived": 9}, bound=10)
    assert checks["archived_equals_acked"] is False
    assert status(checks) == "FAIL"


@pytest.mark.parametrize(("growth", "expected"), [
    ({"ingest": 1.0, "processor": 9.9}, True),
    ({"ingest": 1.0, "processor": None}, None),  # a process not found: not measured
    ({"ingest": None, "processor": None}, None),
    ({}, None),
    ({"ingest": 12.0, "processor": None}, False),  # a measured failure is a failure
    ({"ingest": 10.0, "processor": 1.0}, False),
    ({"ingest": float("nan"), "processor": 1.0}, False),  # the process vanished mid-run
])
def test_rss_check(growth: dict, expected: bool | None) -> None:
    assert verdict(Recorder(0.0), growth, MET, bound=10)["rss_growth_under_10pct"] is expected


def test_a_failure_outranks_a_missing_figure() -> None:
    checks = {"no_errors": False, "archived_equals_acked": None, "lag_drained": True}
    assert status(checks) == "FAIL"
    assert verdict_line(checks) == (
        "Verdict: FAIL (failed: no_errors; not measured: archived_equals_acked); no_errors NO, "
        "archived_equals_acked NOT MEASURED, lag_drained yes.")


@pytest.fixture
def listener() -> Iterator[tuple[int, subprocess.Popen]]:
    """A process whose command line reads like `reco run ingest`, listening on a port."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, "reco", "run", "ingest"],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline()), proc
    finally:
        proc.kill()
        proc.wait()


def test_service_process_finds_the_service_by_its_port(listener) -> None:
    port, proc = listener
    assert service_process(f"http://127.0.0.1:{port}", "ingest").pid == proc.pid
    assert service_process(f"http://localhost:{port}/", "ingest").pid == proc.pid


def test_service_process_refuses_another_program_on_the_port(listener) -> None:
    port, proc = listener
    name = psutil.Process(proc.pid).name()
    with pytest.raises(NotMeasured, match=rf"port {port} is held by {name} \(pid {proc.pid}\), "
                       r"not `reco run recommendations`"):
        service_process(f"http://127.0.0.1:{port}", "recommendations")


def test_service_process_without_a_listener_or_on_another_host() -> None:
    with socket.socket() as sock:  # bound, not listening: a port nobody serves
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(NotMeasured, match=f"nothing on this machine listens on port {port}"):
            service_process(f"http://127.0.0.1:{port}", "ingest")
    with pytest.raises(NotMeasured, match="192.0.2.10 is not this machine"):
        service_process("http://192.0.2.10:8080", "ingest")  # TEST-NET-1: never local


@pytest.mark.integration
def test_count_archived_counts_the_runs_events_only(pg: psycopg.Connection, settings) -> None:
    ours = [str(uuid.uuid4()) for _ in range(5)]
    other = str(uuid.uuid4())  # other traffic on the same table
    for event_id in [*ours[:3], other]:
        pg.execute("INSERT INTO events (event_id, user_id, item_id, event_type, event_time) "
                   "VALUES (%s, 'u', 'i', 'view', now())", (event_id,))
    assert count_archived(settings.database_url, ours) == 3
    assert count_archived(settings.database_url, ours, chunk=2) == 3
    assert count_archived(settings.database_url, []) == 0


def test_count_archived_on_an_unreachable_database_raises_a_psycopg_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(psycopg.OperationalError):
            count_archived(f"postgresql://reco:reco@127.0.0.1:{port}/reco", ["x"])
