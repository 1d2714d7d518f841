"""The soak's measurements and verdict (benchmarks/soak_checks.py): lag probes on real
Prometheus pages (one per copy of a consumer, idle copies included), the verdict's PASS / FAIL /
INCOMPLETE, finding a service's process by its port, the credentials the load carries (and the
settings it refuses), the copies an attached soak watches, the report's timestamp, and counting
the run's archived events in a real PostgreSQL."""

from __future__ import annotations

import importlib
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace

import httpx
import jwt
import psutil
import psycopg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PromCounter

from benchmarks.soak_checks import (
    Credentials,
    NoLag,
    NotMeasured,
    Recorder,
    auth_gap,
    count_archived,
    lag,
    parse_lag,
    service_process,
    status,
    verdict,
    verdict_line,
)
from reco.settings import Settings
from reco.stack.components import app_components, consumer_copies
from reco.stack.health import free_port
from serving.security import ApiKeyCheck, AuthError, JwtCheck, require_subject

GROUP = "reco-processor"
ARCHIVER = "event-archiver"
TOPIC, PARTITIONS = "events", 3  # Settings().topic_events, .topic_partitions


def spread(group: str, *lags: float) -> dict[tuple[str, int], float]:
    """`group`'s lag on partitions 0, 1, ... in order (every partition: a full probe)."""
    return {(group, partition): value for partition, value in enumerate(lags)}


def consumer_page(lags: dict[tuple[str, int], float]) -> str:
    """A consumer's /metrics as prometheus_client writes it; `lags` maps (group, partition) to
    lag. No entries: the gauge's HELP and TYPE lines only (a copy that owns no partition)."""
    registry = CollectorRegistry()
    gauge = Gauge("kafka_consumer_lag", "Messages behind", ["group", "topic", "partition"],
                  registry=registry)
    PromCounter("events_processed_total", "Events", ["event_type"],
                registry=registry).labels("view").inc(7)
    for (group, partition), value in lags.items():
        gauge.labels(group, TOPIC, str(partition)).set(value)
    return generate_latest(registry).decode()


def client_for(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_parse_lag_reads_the_groups_partitions_only() -> None:
    page = consumer_page({(GROUP, 0): 3, (GROUP, 1): 4, (GROUP, 2): 0, ("event-archiver", 0): 50})
    assert parse_lag(page, GROUP) == {("events", "0"): 3.0, ("events", "1"): 4.0,
                                      ("events", "2"): 0.0}
    assert parse_lag(page, "event-archiver") == {("events", "0"): 50.0}


@pytest.mark.parametrize("page", [
    consumer_page({}),  # the gauge is declared, no partition owned
    consumer_page({(ARCHIVER, 0): 0}),  # another consumer's page
    "",
], ids=["owns-none", "other-group", "empty"])
def test_parse_lag_without_the_groups_series_shows_no_partition(page: str) -> None:
    assert parse_lag(page, GROUP) == {}


def test_parse_lag_on_an_unreadable_sample_is_no_figure() -> None:
    with pytest.raises(NoLag, match="unreadable sample"):
        parse_lag('kafka_consumer_lag{group="reco-processor",partition="0"} many\n', GROUP)


async def test_lag_reads_a_page_with_lag_lines() -> None:
    page = consumer_page(spread(GROUP, 2, 5, 0))
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text=page)

    unanswered: Counter[str] = Counter()
    async with client_for(handler) as client:
        assert await lag(client, ["http://proc:9101"], GROUP, TOPIC, PARTITIONS,
                         unanswered) == 7.0
    assert seen == ["http://proc:9101/metrics"]
    assert unanswered == Counter()


async def test_a_lone_page_without_lag_lines_leaves_every_partition_on_no_page() -> None:
    # Not assigned yet (or another service's page): no evidence, not a lag of 0.
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(200, text=consumer_page({}))) as client:
        for _ in range(2):
            assert await lag(client, ["http://proc:9101"], GROUP, TOPIC, PARTITIONS,
                             unanswered) is None
    assert unanswered == Counter({"reco-processor: partition(s) 0, 1, 2 of events on no page": 2})


async def test_an_http_error_page_is_an_unanswered_probe() -> None:
    # An error page that happens to carry lag lines is still not an answer.
    page = consumer_page(spread(GROUP, 0, 0, 0))
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(503, text=page)) as client:
        assert await lag(client, ["http://proc:9101"], GROUP, TOPIC, PARTITIONS,
                         unanswered) is None
    assert unanswered == Counter({"http://proc:9101/metrics: HTTP 503": 1})


async def test_no_connection_is_an_unanswered_probe() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    unanswered: Counter[str] = Counter()
    async with client_for(refuse) as client:
        assert await lag(client, ["http://proc:9101"], GROUP, TOPIC, PARTITIONS,
                         unanswered) is None
    assert unanswered == Counter({"http://proc:9101/metrics: ConnectError": 1})


async def test_an_unreadable_lag_sample_is_an_unanswered_probe() -> None:
    page = 'kafka_consumer_lag{group="reco-processor",partition="0",topic="events"} many\n'
    unanswered: Counter[str] = Counter()
    async with client_for(lambda r: httpx.Response(200, text=page)) as client:
        assert await lag(client, ["http://proc:9101"], GROUP, TOPIC, PARTITIONS,
                         unanswered) is None
    (reason,) = unanswered
    assert reason.startswith("http://proc:9101/metrics: unreadable sample")


COPIES = ["http://proc:9101", "http://proc:9111"]  # two copies of the processor


def copies_client(pages: dict[int, httpx.Response]) -> httpx.AsyncClient:
    """Each copy's /metrics answer, by its port."""
    return client_for(lambda r: pages[r.url.port])


async def test_lag_sums_the_partitions_of_every_copy() -> None:
    # Two copies split the three partitions between them.
    pages = {9101: httpx.Response(200, text=consumer_page({(GROUP, 0): 2, (GROUP, 1): 5})),
             9111: httpx.Response(200, text=consumer_page({(GROUP, 2): 4}))}
    unanswered: Counter[str] = Counter()
    async with copies_client(pages) as client:
        assert await lag(client, COPIES, GROUP, TOPIC, PARTITIONS, unanswered) == 11.0
    assert unanswered == Counter()


@pytest.mark.parametrize("idle", [9101, 9111])
async def test_an_idle_copys_page_adds_nothing_to_the_sum(idle: int) -> None:
    # More copies than partitions (or just after a rebalance): the copy that owns none answers
    # 200 without a series of the group, which is no failure when the other shows them all.
    busy = 9111 if idle == 9101 else 9101
    pages = {busy: httpx.Response(200, text=consumer_page(spread(GROUP, 2, 5, 4))),
             idle: httpx.Response(200, text=consumer_page({}))}
    unanswered: Counter[str] = Counter()
    async with copies_client(pages) as client:
        assert await lag(client, COPIES, GROUP, TOPIC, PARTITIONS, unanswered) == 11.0
    assert unanswered == Counter()


async def test_partitions_on_no_page_leave_the_probe_without_a_figure() -> None:
    # Every page answers, but no copy shows partitions 0 and 2: not a lag of 0 for them.
    pages = {9101: httpx.Response(200, text=consumer_page({(GROUP, 1): 5})),
             9111: httpx.Response(200, text=consumer_page({(ARCHIVER, 0): 1, (ARCHIVER, 2): 1}))}
    unanswered: Counter[str] = Counter()
    async with copies_client(pages) as client:
        assert await lag(client, COPIES, GROUP, TOPIC, PARTITIONS, unanswered) is None
        # Another topic's series (or partitions of another count) do not stand in for them.
        assert await lag(client, COPIES, GROUP, "clicks", 1, unanswered) is None
    assert unanswered == Counter({"reco-processor: partition(s) 0, 2 of events on no page": 1,
                                  "reco-processor: partition(s) 0 of clicks on no page": 1})


async def test_a_partition_on_two_copies_pages_counts_once_at_its_max() -> None:
    # During a rebalance the copy losing partition 1 can still show its last figure.
    pages = {9101: httpx.Response(200, text=consumer_page({(GROUP, 0): 3, (GROUP, 1): 1})),
             9111: httpx.Response(200, text=consumer_page({(GROUP, 1): 6, (GROUP, 2): 0}))}
    async with copies_client(pages) as client:
        assert await lag(client, COPIES, GROUP, TOPIC, PARTITIONS) == 9.0


@pytest.mark.parametrize(("answer", "reason"), [
    (httpx.Response(503, text=consumer_page({(GROUP, 2): 0})),
     "http://proc:9111/metrics: HTTP 503"),
    (httpx.Response(200, text=consumer_page({})),
     "reco-processor: partition(s) 2 of events on no page"),
], ids=["http-error", "no-lag-lines"])
async def test_one_copys_page_without_a_figure_leaves_the_probe_without_one(
        answer: httpx.Response, reason: str) -> None:
    # The other copy's figure is only its own partitions: no figure, not a partial one. An
    # unanswered page is the reason; a page that answers shows which partitions it owns.
    pages = {9101: httpx.Response(200, text=consumer_page({(GROUP, 0): 2, (GROUP, 1): 5})),
             9111: answer}
    unanswered: Counter[str] = Counter()
    async with copies_client(pages) as client:
        assert await lag(client, COPIES, GROUP, TOPIC, PARTITIONS, unanswered) is None
    assert unanswered == Counter({reason: 1})


@pytest.mark.parametrize("copies", [1, 3])
def test_consumer_copies_names_and_metrics_ports(copies: int) -> None:
    settings = Settings(processor_metrics_port=7101, processor_copies=copies,
                        archiver_metrics_port=7102)
    expected = {"processor": [("processor", 7101), ("processor-2", 7103),
                              ("processor-3", 7105)][:copies],
                "archiver": [("archiver", 7102)]}
    assert consumer_copies(settings) == expected
    # The stack runs exactly these: same names, each serving its metrics on its port.
    run = {c.name: c.ports for c in app_components(settings) if c.job}
    assert run == {name: (port,) for role in expected.values() for name, port in role}


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/soak.py as its script imports it (soak_checks from its own directory)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("soak")


def test_an_attached_soak_reads_and_watches_every_copy(soak: ModuleType,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = free_port()
    monkeypatch.setenv("RECO_PROCESSOR_METRICS_PORT", str(base))
    monkeypatch.setenv("RECO_PROCESSOR_COPIES", "3")
    archivers = ["http://127.0.0.1:1", "http://127.0.0.1:2"]  # --archiver-metrics-url A B
    stack = soak.Stack()
    stack.attach({"ingest": "http://127.0.0.1:3", "recommendations": "http://127.0.0.1:4",
                  "processor": None, "archiver": archivers})
    processors = [f"http://127.0.0.1:{base + 2 * n}" for n in range(3)]
    assert stack.urls["processor"] == processors  # the default: every copy of the settings
    assert stack.urls["archiver"] == archivers
    # No `reco run` listens there: each copy is unwatched under its own name, with why.
    assert list(stack.unwatched) == ["ingest", "recommendations", "processor", "processor-2",
                                     "processor-3", "archiver", "archiver-2"]
    assert stack.unwatched["processor-3"].startswith(f"{processors[2]}: ")
    assert stack.unwatched["archiver-2"].startswith("http://127.0.0.1:2: ")


async def test_an_attached_soak_waits_through_an_idle_copy(soak: ModuleType) -> None:
    """Three processor copies of three partitions after a rebalance: one owns all three, the
    others none. The soak starts (no RuntimeError), and reads the sum."""
    full = consumer_page({**spread(GROUP, 1, 2, 3), **spread(ARCHIVER, 0, 0, 4)})
    idle = consumer_page({})

    def serve(text: str):
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=text)
        return page

    app = web.Application()
    app.router.add_get("/full/metrics", serve(full))
    app.router.add_get("/idle/metrics", serve(idle))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        stack = soak.Stack()
        stack.settings = Settings(topic_events=TOPIC, topic_partitions=PARTITIONS,
                                  group_processor=GROUP, group_archiver=ARCHIVER)
        stack.urls = {"processor": [f"{url}/idle", f"{url}/full", f"{url}/idle"],
                      "archiver": [f"{url}/full"]}
        await stack.wait_for_lag(timeout_s=2)
        unanswered: Counter[str] = Counter()
        async with httpx.AsyncClient() as client:
            assert await stack.lags(client, unanswered) == (6.0, 4.0)
        assert unanswered == Counter()
        stack.urls["archiver"] = [f"{url}/idle"]  # no copy shows the archiver's partitions
        with pytest.raises(RuntimeError, match="event-archiver: partition.s. 0, 1, 2 of events "
                           "on no page"):
            await stack.wait_for_lag(timeout_s=0)
    finally:
        await runner.cleanup()


def test_no_credentials_without_keys_or_auth() -> None:
    credentials = Credentials(Settings(api_keys="", auth_enabled=False), valid_s=3600)
    assert credentials.ingest == {}
    assert credentials.reco("u1") == {}


def claims_of(headers: dict[str, str]) -> dict:
    token = headers["Authorization"].removeprefix("Bearer ")
    return jwt.decode(token, options={"verify_signature": False})


def test_a_token_lasts_as_long_as_it_is_asked_to() -> None:
    # Cached for the run: a run longer than a day must not meet its tokens' expiry.
    settings = Settings(auth_enabled=True, jwt_algorithm="HS256", jwt_secret="s" * 40,
                        jwt_audience=None)
    before = time.time()
    credentials = Credentials(settings, valid_s=3 * 86_400)
    exp = claims_of(credentials.reco("u1"))["exp"]
    assert before + 3 * 86_400 - 1 <= exp <= time.time() + 3 * 86_400
    assert credentials.reco("u1") is credentials.reco("u1")  # one token per user


def test_a_token_carries_the_audience_the_stack_checks() -> None:
    settings = Settings(auth_enabled=True, jwt_algorithm="HS256", jwt_secret="s" * 40,
                        jwt_audience="reco-api")
    headers = Credentials(settings, valid_s=3600).reco("u7")
    assert claims_of(headers)["aud"] == "reco-api"
    assert JwtCheck(settings).subject(headers["Authorization"]) == "u7"
    elsewhere = settings.model_copy(update={"jwt_audience": "another-api"})
    with pytest.raises(AuthError, match="token audience is not accepted"):
        JwtCheck(elsewhere).subject(headers["Authorization"])


@pytest.mark.parametrize(("auth", "keys", "algorithm", "expected"), [
    (False, "", "RS256", None),  # nothing is checked: nothing is needed
    (True, "key-one-0123456789", "HS256", None),
    (True, "", "HS256", "RECO_API_KEYS is empty"),
    (True, "key-one-0123456789", "RS256", "RECO_JWT_ALGORITHM is RS256"),
    (True, "", "RS256", "RECO_API_KEYS is empty.*; and RECO_JWT_ALGORITHM is RS256"),
])
def test_auth_gap_names_the_settings_that_leave_the_soak_only_401s(
        auth: bool, keys: str, algorithm: str, expected: str | None) -> None:
    gap = auth_gap(Settings(auth_enabled=auth, api_keys=keys, jwt_algorithm=algorithm,
                            jwt_public_key="unused.pem"))
    if expected is None:
        assert gap is None
    else:
        assert gap is not None and re.search(expected, gap), gap


@pytest.mark.parametrize(("env", "message"), [
    ({"RECO_API_KEYS": ""}, "RECO_API_KEYS is empty"),
    ({"RECO_API_KEYS": "key-one-0123456789", "RECO_JWT_ALGORITHM": "RS256",
      "RECO_JWT_PUBLIC_KEY": "unused.pem"}, "RECO_JWT_ALGORITHM is RS256"),
])
def test_an_attached_soak_that_could_only_get_401s_refuses_to_start(
        soak: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], env: dict[str, str], message: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("RECO_AUTH_ENABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def no_stack() -> None:
        raise AssertionError("the soak went on to its stack")

    monkeypatch.setattr(soak, "Stack", no_stack)
    monkeypatch.setattr(sys, "argv", ["soak.py", "--ingest-url", "http://127.0.0.1:1",
                                      "--reco-url", "http://127.0.0.1:2"])
    with pytest.raises(SystemExit) as exited:
        soak.main()
    assert exited.value.code == 2
    assert 2 not in soak.EXIT_STATUS.values()  # a refusal is no verdict
    err = capsys.readouterr().err
    assert ("error: refusing to soak a running stack that would answer 401: the shell's "
            "settings have RECO_AUTH_ENABLED=true but ") in err
    assert message in err


async def test_the_load_carries_credentials_the_services_accept(
        soak: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest and recommendation requests pass serving/security.py's own checks."""
    settings = Settings(auth_enabled=True, api_keys="key-one-0123456789,key-two-0123456789",
                        jwt_algorithm="HS256", jwt_secret="s" * 40, topic_events=TOPIC,
                        topic_partitions=PARTITIONS, group_processor=GROUP,
                        group_archiver=ARCHIVER)
    keys, tokens = ApiKeyCheck(settings.api_keys), JwtCheck(settings)
    expiries = []

    async def events(request: web.Request) -> web.Response:
        try:
            keys.verify(request.headers.get("X-API-Key"))
        except AuthError:
            return web.Response(status=401)
        return web.Response(status=202)

    async def recommendations(request: web.Request) -> web.Response:
        try:
            subject = tokens.subject(request.headers.get("Authorization"))
            require_subject(subject, request.query["user_id"])
            expiries.append(claims_of(dict(request.headers))["exp"])
        except AuthError as exc:
            return web.Response(status=exc.status)
        return web.json_response({"items": []})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=consumer_page({**spread(GROUP, 0, 0, 0),
                                                **spread(ARCHIVER, 0, 0, 0)}))

    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_get("/recommendations", recommendations)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        stack = soak.Stack()
        stack.settings = settings
        stack.urls = {"ingest": url, "recommendations": url, "processor": [url],
                      "archiver": [url]}
        monkeypatch.setattr(soak, "LAG_PROBE_S", 0.1)
        began = time.time()
        rec = soak.Recorder(time.perf_counter())
        await soak.load(stack, 0.5, 20.0, 20.0, rec)
    finally:
        await runner.cleanup()
    assert set(rec.statuses) == {"ingest 202", "recommendations 200"}, dict(rec.statuses)
    assert rec.statuses["ingest 202"] > 0 and rec.statuses["recommendations 200"] > 0
    # Every token outlives the run by the margin (the drain after it, and more).
    assert min(expiries) >= began + 0.5 + soak.TOKEN_MARGIN_S - 1
    assert soak.TOKEN_MARGIN_S >= 3600
    assert rec.lag and rec.unanswered == Counter()  # the lag of every partition, probed


async def probed(processor_page: str, archiver_page: str, samples: int = 3) -> Recorder:
    """A Recorder whose lag samples come from probing these two pages, as the soak does."""
    pages = {"proc": processor_page, "arch": archiver_page}
    rec = Recorder(start=0.0)
    async with client_for(lambda r: httpx.Response(200, text=pages[r.url.host])) as client:
        for n in range(samples):
            rec.lag.append((5.0 * n,
                            await lag(client, ["http://proc"], GROUP, TOPIC, PARTITIONS,
                                      rec.unanswered),
                            await lag(client, ["http://arch"], ARCHIVER, TOPIC, PARTITIONS,
                                      rec.unanswered)))
    rec.acked_ids = [str(uuid.uuid4()) for _ in range(10)]
    return rec


MET = {"lag_drained": True, "archived": 10}
GROWTH = {"ingest": 1.0, "recommendations": 0.5, "processor": 0.2, "archiver": 0.1}


async def test_verdict_passes_on_answered_lag_under_the_bound() -> None:
    rec = await probed(consumer_page(spread(GROUP, 3, 0, 0)),
                       consumer_page(spread(ARCHIVER, 0, 9, 0)))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert all(ok is True for ok in checks.values()), checks
    assert status(checks) == "PASS"


async def test_verdict_fails_when_a_consumers_page_has_no_lag_lines() -> None:
    # Read as lag 0, this page used to pass "processor_lag_bounded" without evidence. The only
    # copy shows no partition: every partition is on no page.
    rec = await probed(consumer_page({}), consumer_page(spread(ARCHIVER, 0, 9, 0)))
    checks = verdict(rec, GROWTH, MET, bound=10)
    failed = {name for name, ok in checks.items() if ok is not True}
    assert failed == {"processor_lag_probes_answered", "processor_lag_bounded"}
    assert status(checks) == "FAIL"
    assert rec.unanswered == Counter(
        {"reco-processor: partition(s) 0, 1, 2 of events on no page": 3})


async def test_verdict_fails_on_lag_over_the_bound() -> None:
    rec = await probed(consumer_page(spread(GROUP, 3, 0, 0)),
                       consumer_page(spread(ARCHIVER, 0, 10, 0)))
    checks = verdict(rec, GROWTH, MET, bound=10)
    assert {name for name, ok in checks.items() if ok is not True} == {"archiver_lag_bounded"}


async def test_an_events_table_out_of_reach_makes_the_verdict_incomplete() -> None:
    rec = await probed(consumer_page(spread(GROUP, 3, 0, 0)),
                       consumer_page(spread(ARCHIVER, 0, 9, 0)))
    checks = verdict(rec, GROWTH, {"lag_drained": True, "archived": None}, bound=10)
    assert checks["archived_equals_acked"] is None
    assert [n for n, ok in checks.items() if ok is not True] == ["archived_equals_acked"]
    assert status(checks) == "INCOMPLETE"
    assert verdict_line(checks).startswith(
        "Verdict: INCOMPLETE (not measured: archived_equals_acked); no_errors yes, ")
    assert "archived_equals_acked NOT MEASURED, rss_growth_under_10pct yes." in verdict_line(
        checks)


async def test_archived_short_of_acked_fails() -> None:
    rec = await probed(consumer_page(spread(GROUP, 3, 0, 0)),
                       consumer_page(spread(ARCHIVER, 0, 9, 0)))
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


def test_the_report_says_when_it_was_generated(soak: ModuleType) -> None:
    rec = Recorder(time.perf_counter())
    rec.record("ingest", rec.start, 202)
    args = SimpleNamespace(duration=60.0, ingest_rate=1.0, reco_rate=1.0)
    rss = {"ready": {}, "warm": {}, "end": {}}
    result = soak.report(rec, rss, args, {**MET, "drained_s": 0.0}, {}, [])
    at = datetime.fromisoformat(json.loads(json.dumps(result, default=str))["generated_at"])
    assert at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)
    lines = soak.markdown(result).splitlines()
    assert lines[2] == f"Generated by `benchmarks/soak.py` on {at:%Y-%m-%d %H:%M} UTC."


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
