"""The soak's lag probe and verdict (benchmarks/soak_checks.py), on real Prometheus pages."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PromCounter

from benchmarks.soak_checks import NoLag, Recorder, lag, parse_lag, verdict

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
    rec.acked = 10
    return rec


MET = {"lag_drained": True, "archived": 10}
GROWTH = {"ingest": 1.0, "recommendations": 0.5, "processor": 0.2, "archiver": 0.1}


async def test_verdict_passes_on_answered_lag_under_the_bound() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert all(checks.values()), checks


async def test_verdict_fails_when_a_consumers_page_has_no_lag_lines() -> None:
    # Read as lag 0, this page used to pass "processor_lag_bounded" without evidence.
    rec = await probed(consumer_page({}), consumer_page({("event-archiver", 1): 9}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    failed = {name for name, ok in checks.items() if not ok}
    assert failed == {"processor_lag_probes_answered", "processor_lag_bounded"}
    assert rec.unanswered == Counter(
        {"http://proc/metrics: no kafka_consumer_lag series of group 'reco-processor'": 3})


async def test_verdict_fails_on_lag_over_the_bound() -> None:
    rec = await probed(consumer_page({(GROUP, 0): 3}), consumer_page({("event-archiver", 1): 10}))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert {name for name, ok in checks.items() if not ok} == {"archiver_lag_bounded"}
