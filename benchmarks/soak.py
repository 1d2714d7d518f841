"""Soak: a bounded run of mixed load (ingest + recommendations) watching errors, latency over
time, processor/archiver lag and the memory of every process.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes, its own stack
    .venv/bin/python benchmarks/soak.py --duration 180   # shorter
    .venv/bin/python benchmarks/soak.py --ingest-url http://127.0.0.1:8080 \\
        --reco-url http://127.0.0.1:8081                 # a running stack

Its own stack: Kafka, Redis, PostgreSQL (tests/servers.py) and `reco run ingest|
recommendations|processor|archiver` as subprocesses on free loopback ports. Open-loop load at
fixed rates. Targets: no errors or skipped sends; every processor/archiver lag probe answered
(every copy's /metrics page answers, and every partition of the events topic is on one: a copy
that owns no partition shows no kafka_consumer_lag series of its group and adds nothing, but a
partition on no page or one copy's page without an answer leaves the probe without a figure)
and under ten seconds of ingest;
lag drained and every acknowledged event archived; RSS growth under 10% (after a one-minute
warm-up). Writes benchmarks/reports/soak.{md,json} and prints the table. Not run by CI.

A running stack (--ingest-url and --reco-url): a consumer's lag is read from the metrics URL
of each of its copies (--processor-metrics-url / --archiver-metrics-url, one or more; default
127.0.0.1 at the ports of the copies the settings run, RECO_PROCESSOR_METRICS_PORT + 2*n for
RECO_PROCESSOR_COPIES copies, the archiver's likewise), the max per partition over the pages
(two copies can show one during a rebalance), summed. The consumer group names, the ports,
the PostgreSQL DSN and the credentials come from the RECO_* settings (environment, .env) of
the shell running the soak, so give it the stack's. The archived check counts the events this
run sent, by event_id, so other traffic does not skew it; RSS is read from the process of each
`reco run <service>` that listens on its URL's port on this machine, each consumer copy under
its stack name (processor, processor-2, ...). A figure out of reach (PostgreSQL not reachable
from here, a remote host, a container's port proxy, another user's process without root) is
NOT MEASURED, with the reason: the verdict is then INCOMPLETE (or FAIL if a measured check
failed), never PASS.
Auth (serving/security.py): with RECO_API_KEYS set, ingest requests carry the first key in
X-API-Key; with RECO_AUTH_ENABLED, each recommendation request a JWT whose subject is its user,
signed HS256 with RECO_JWT_SECRET (and RECO_JWT_AUDIENCE as its audience when set), valid for
the run and an hour more. With RECO_AUTH_ENABLED and no RECO_API_KEYS, or RS256 (no private
key here), every request of one kind would get 401: the soak refuses to start and says what
to set.
Exit status: 0 PASS, 1 FAIL, 2 arguments refused (the reason on stderr), 3 INCOMPLETE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soak_checks import (  # noqa: E402
    Credentials,
    NotMeasured,
    Recorder,
    auth_gap,
    count_archived,
    lag,
    service_process,
    status,
    verdict,
    verdict_line,
)

from reco import db  # noqa: E402
from reco.settings import Settings  # noqa: E402
from reco.stack import servers as stack_servers  # noqa: E402
from reco.stack.components import consumer_copies, copy_name  # noqa: E402
from reco.stack.health import free_port, http_ok, wait_until  # noqa: E402
from reco.topics import ensure_topics  # noqa: E402
from tests import servers  # noqa: E402

REPORTS = ROOT / "benchmarks" / "reports"
SERVICES = ("ingest", "recommendations", "processor", "archiver")
CONSUMERS = ("processor", "archiver")
USERS, ITEMS = 5000, 20000
WARMUP_S = 60.0
LAG_PROBE_S = 5.0  # between lag probes under load
TOKEN_MARGIN_S = 3600.0  # user tokens outlive the load by this much (the drain, a slow start)
# Per verdict; 2 stays argparse's own status for refused arguments, so a script can tell them.
EXIT_STATUS = {"PASS": 0, "FAIL": 1, "INCOMPLETE": 3}


class Stack:
    """Own servers and the project's four processes, or URLs of a running stack."""

    def __init__(self) -> None:
        self.servers: list[servers.ServerProcess] = []
        self.procs: dict[str, subprocess.Popen] = {}  # the processes this run started
        self.watched: dict[str, psutil.Process] = {}  # whose RSS is read
        self.unwatched: dict[str, str] = {}  # component -> why its RSS is not read
        # ingest, recommendations: the API's base URL; processor, archiver: one per copy
        self.urls: dict[str, str | list[str]] = {}
        self.settings: Settings | None = None
        self.attached = False
        self.logdir = Path(tempfile.mkdtemp(prefix="reco-soak-"))

    def start(self) -> None:
        pg, rd, kf = servers.start_postgres(), servers.start_redis(), servers.start_kafka()
        self.servers = [pg, rd, kf]
        s = Settings(pg_port=pg.port, redis_url=f"redis://127.0.0.1:{rd.port}/0",
                     kafka_bootstrap=f"127.0.0.1:{kf.port}", ingest_port=free_port(),
                     reco_port=free_port(), processor_metrics_port=free_port(),
                     archiver_metrics_port=free_port())
        stack_servers.ensure_databases(pg.port, s.pg_user, s.pg_password.get_secret_value(),
                                       [s.pg_database])
        db.migrate(s)
        asyncio.run(ensure_topics(s.kafka_bootstrap,
                                  {s.topic_events: s.topic_partitions, s.topic_dlq: 1}))
        self.settings = s
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RECO_PG_PORT": str(s.pg_port),
               "RECO_REDIS_URL": s.redis_url, "RECO_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
               "RECO_INGEST_PORT": str(s.ingest_port), "RECO_RECO_PORT": str(s.reco_port),
               "RECO_PROCESSOR_METRICS_PORT": str(s.processor_metrics_port),
               "RECO_ARCHIVER_METRICS_PORT": str(s.archiver_metrics_port)}
        for name in SERVICES:
            log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "reco.cli", "run", name], env=env, cwd=self.logdir,
                stdout=log, stderr=subprocess.STDOUT)
            self.watched[name] = psutil.Process(self.procs[name].pid)
        self.urls = {"ingest": f"http://127.0.0.1:{s.ingest_port}",
                     "recommendations": f"http://127.0.0.1:{s.reco_port}",
                     "processor": [f"http://127.0.0.1:{s.processor_metrics_port}"],
                     "archiver": [f"http://127.0.0.1:{s.archiver_metrics_port}"]}
        for name, service, url in self.components():
            path = "/metrics" if service in CONSUMERS else "/health"
            if not wait_until(lambda u=url + path: http_ok(u), 60):
                raise RuntimeError(f"{name} did not start; see {self.logdir}")

    def attach(self, urls: dict[str, str | list[str] | None],
               settings: Settings | None = None) -> None:
        """A running stack; a consumer without URLs: every copy its RECO_* settings run
        (`settings`, by default the shell's)."""
        # The consumer groups, topic, DSN and credentials of the stack's environment.
        self.settings = settings or Settings()
        self.urls, self.attached = {}, True
        for service, copies in consumer_copies(self.settings).items():
            self.urls[service] = [f"http://127.0.0.1:{port}" for _, port in copies]
        self.urls.update({name: url for name, url in urls.items() if url})
        for name, service, url in self.components():
            try:
                self.watched[name] = service_process(url, service)
            except NotMeasured as exc:
                self.unwatched[name] = f"{url}: {exc}"

    def components(self) -> list[tuple[str, str, str]]:
        """(name, service, base URL) of each process: a consumer's copies named as the stack
        names them (processor, processor-2, ...)."""
        out = []
        for service in SERVICES:
            urls = self.urls[service]
            out += ([(service, service, urls)] if isinstance(urls, str) else
                    [(copy_name(service, n), service, url) for n, url in enumerate(urls)])
        return out

    async def lags(self, client: httpx.AsyncClient, unanswered: Counter[str] | None = None
                   ) -> tuple[float | None, float | None]:
        """Processor and archiver lag, each of its consumer group over its copies' pages, on
        every partition of the events topic."""
        s = self.settings
        assert s is not None, "start() or attach() first"
        topic = (s.topic_events, s.topic_partitions)
        return (await lag(client, self.urls["processor"], s.group_processor, *topic, unanswered),
                await lag(client, self.urls["archiver"], s.group_archiver, *topic, unanswered))

    async def wait_for_lag(self, timeout_s: float = 60.0) -> None:
        """Until both consumers publish the lag of every partition (assigned, first fetch
        done) over their copies' pages: without lag figures the soak could only fail, so it says
        why and does not start the load."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while True:
                unanswered: Counter[str] = Counter()
                if None not in await self.lags(client, unanswered):
                    return
                if time.monotonic() > deadline:
                    where = "" if self.attached else f"; see {self.logdir}"
                    raise RuntimeError(f"no consumer lag to watch after {timeout_s:.0f} s: "
                                       + "; ".join(unanswered) + where)
                await asyncio.sleep(1)

    def rss_mb(self) -> dict[str, float]:
        """Per watched process; NaN once it is gone (is_running: not a reused pid)."""
        out = {}
        for name, proc in self.watched.items():
            try:
                out[name] = proc.memory_info().rss / 2**20 if proc.is_running() else math.nan
            except psutil.Error:
                out[name] = math.nan
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in self.servers:
            servers.remove(server)


async def load(stack: Stack, duration_s: float, ingest_rate: float, reco_rate: float,
               rec: Recorder) -> None:
    urls = stack.urls
    assert stack.settings is not None
    # Tokens are cached for the run: valid through the load, the drain after it, and more.
    credentials = Credentials(stack.settings, valid_s=duration_s + TOKEN_MARGIN_S)
    rng = random.Random(1)
    # aiohttp, not httpx: under ~50 concurrent requests/s httpx's pool alone added 100s of ms
    # per request here (measured), which would have been reported as server latency.
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client, \
            httpx.AsyncClient() as probe:
        sem = asyncio.Semaphore(256)

        async def one(endpoint: str, request, event_id: str | None) -> None:
            began = time.perf_counter()
            try:
                async with request() as response:
                    await response.read()
                    status: int | str = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            finally:
                sem.release()
            rec.record(endpoint, began, status)
            if event_id is not None and status == 202:
                rec.acked_ids.append(event_id)

        def user() -> str:
            return f"u{int(rng.paretovariate(1.2)) % USERS}"

        def ingest_call():
            body = {"event_id": str(uuid.uuid4()), "user_id": user(),
                    "item_id": f"i{int(rng.paretovariate(1.1)) % ITEMS}",
                    "event_type": rng.choice(["view"] * 7 + ["click", "cart", "purchase"])}
            return lambda: client.post(f"{urls['ingest']}/events", json=body,
                                       headers=credentials.ingest), body["event_id"]

        def reco_call():
            params = {"user_id": user(), "k": 20}
            headers = credentials.reco(params["user_id"])
            return lambda: client.get(f"{urls['recommendations']}/recommendations",
                                      params=params, headers=headers), None

        async def generator(rate: float, endpoint: str, make) -> None:
            interval, tick = 1.0 / rate, time.perf_counter()
            end = rec.start + duration_s
            tasks = set()
            while time.perf_counter() < end:
                tick += interval
                delay = tick - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0 or sem.locked():
                    rec.late += 1  # over a second behind schedule: skipped, and reported
                    continue
                await sem.acquire()
                task = asyncio.create_task(one(endpoint, *make()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

        async def lag_probe() -> None:
            while time.perf_counter() < rec.start + duration_s:
                at = time.perf_counter() - rec.start
                rec.lag.append((at, *await stack.lags(probe, rec.unanswered)))
                await asyncio.sleep(LAG_PROBE_S)

        await asyncio.gather(generator(ingest_rate, "ingest", ingest_call),
                             generator(reco_rate, "recommendations", reco_call), lag_probe())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(rec: Recorder, rss: dict[str, dict[str, float]], args, drained: dict,
           unwatched: dict[str, str], names: list[str]) -> dict:
    """`names`: every process whose RSS is watched or not (in `unwatched`, with why)."""
    minutes = sorted({m for m, _ in rec.lat} | {m for m, _ in rec.errors})
    rows = []
    for m in minutes:
        lags = [(p, a) for t, p, a in rec.lag if m * 60 <= t < (m + 1) * 60]
        row = {"minute": m + 1}
        for e in ("ingest", "recommendations"):
            lat = rec.lat.get((m, e), [])
            row[e] = {"ok": len(lat), "errors": rec.errors.get((m, e), 0),
                      "p50_ms": pct(lat, .5), "p95_ms": pct(lat, .95), "p99_ms": pct(lat, .99)}
        row["processor_lag_max"] = max((p for p, _ in lags if p is not None), default=None)
        row["archiver_lag_max"] = max((a for _, a in lags if a is not None), default=None)
        rows.append(row)
    total = sum(rec.statuses.values())
    errors = sum(rec.errors.values())
    growth = {n: (rss["end"][n] / rss["warm"][n] - 1) * 100 if n in rss["end"] else None
              for n in names}
    result = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "duration_s": args.duration, "ingest_rate": args.ingest_rate,
              "reco_rate": args.reco_rate, "requests": total, "errors": errors,
              "error_rate": errors / total if total else 0.0, "statuses": dict(rec.statuses),
              "late_sends": rec.late, "acked_events": rec.acked, "minutes": rows,
              "lag_samples": rec.lag, "unanswered_lag_probes": dict(rec.unanswered),
              "rss_mb": rss, "rss_growth_pct": growth, **drained}
    # Lag bound: ten seconds of ingest behind.
    result["verdict"] = checks = verdict(rec, growth, drained, bound=args.ingest_rate * 10)
    result["status"] = status(checks)
    result["passed"] = result["status"] == "PASS"
    why = {"archived_equals_acked": drained.get("archived_error"),
           "rss_growth_under_10pct": "; ".join(f"{n}: {w}" for n, w in unwatched.items())}
    result["not_measured"] = {name: why.get(name) or "no reason recorded"
                              for name, ok in checks.items() if ok is None}
    return result


def markdown(r: dict) -> str:
    f = "{:.1f}".format
    lines = [f"# Soak: {r['duration_s']:.0f} s, ingest {r['ingest_rate']:g}/s + "
             f"recommendations {r['reco_rate']:g}/s", "",
             "Generated by `benchmarks/soak.py` on "
             f"{datetime.fromisoformat(r['generated_at']):%Y-%m-%d %H:%M UTC}.", "",
             "| min | ingest ok | err | p50 ms | p95 ms | p99 ms | reco ok | err | p50 ms | "
             "p95 ms | p99 ms | proc lag max | arch lag max |", "|" + "---|" * 13]
    for row in r["minutes"]:
        i, c = row["ingest"], row["recommendations"]
        lines.append(f"| {row['minute']} | {i['ok']} | {i['errors']} | {f(i['p50_ms'])} | "
                     f"{f(i['p95_ms'])} | {f(i['p99_ms'])} | {c['ok']} | {c['errors']} | "
                     f"{f(c['p50_ms'])} | {f(c['p95_ms'])} | {f(c['p99_ms'])} | "
                     f"{row['processor_lag_max']} | {row['archiver_lag_max']} |")
    lines += ["", "| process | RSS ready MB | RSS after warm-up MB | RSS end MB | growth "
              "since warm-up |", "|---|---|---|---|---|"]
    for n, g in r["rss_growth_pct"].items():
        if g is None:
            lines.append(f"| {n} | - | - | - | not measured |")
            continue
        lines.append(f"| {n} | {f(r['rss_mb']['ready'][n])} | {f(r['rss_mb']['warm'][n])} | "
                     f"{f(r['rss_mb']['end'][n])} | {g:+.1f}% |")
    lines += ["", f"Requests {r['requests']}, errors {r['errors']} "
              f"(rate {r['error_rate']:.4%}); statuses {r['statuses']}.",
              f"Sends skipped (generator over a second behind schedule): {r['late_sends']}.",
              f"Lag probes without a figure: {reasons(r['unanswered_lag_probes'])}.",
              f"Acknowledged events {r['acked_events']}; archived "
              f"{'not measured' if r.get('archived') is None else r['archived']}; "
              + (f"lag drained {r.get('drained_s')} s after the load." if r.get("lag_drained")
                 else f"lag NOT drained {r.get('drained_s')} s after the load (probes "
                 f"without a figure: {reasons(r.get('drain_unanswered', {}))})."),
              *(f"Not measured, {name}: {why}." for name, why in r["not_measured"].items()),
              verdict_line(r["verdict"])]
    return "\n".join(lines) + "\n"


def reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{n} x {why}" for why, n in counts.items()) or "none"


async def drain(stack: Stack, rec: Recorder) -> dict:
    """After the load: time for both lags to reach 0, and the archived row count."""
    began, drained = time.perf_counter(), False
    why: Counter[str] = Counter()
    async with httpx.AsyncClient() as client:
        while time.perf_counter() - began < 120:
            p, a = await stack.lags(client, why)
            if p == 0 and a == 0:
                drained = True
                break
            await asyncio.sleep(1)
    # drained_s alone cannot tell a drain at the deadline from the deadline passing.
    out: dict = {"drained_s": round(time.perf_counter() - began, 1), "lag_drained": drained,
                 "drain_unanswered": dict(why)}
    s = stack.settings
    assert s is not None
    try:  # by event_id: the run's own events, exact on a table that other traffic writes too
        out["archived"] = count_archived(s.database_url, rec.acked_ids)
    except psycopg.Error as exc:  # unreachable, refused, no events table: not measured, why
        out["archived"] = None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out["archived_error"] = (f"events table not readable at {s.pg_host}:{s.pg_port}/"
                                 f"{s.pg_database} as {s.pg_user}: {type(exc).__name__} {first}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--ingest-rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--reco-rate", type=float, default=50.0, help="requests/s")
    parser.add_argument("--ingest-url", help="a running stack's ingest API (with --reco-url)")
    parser.add_argument("--reco-url", help="a running stack's recommendation API")
    for role in CONSUMERS:
        parser.add_argument(f"--{role}-metrics-url", nargs="+", metavar="URL",
                            help=f"a running stack's {role} copies, one URL each (default: "
                            "127.0.0.1 and the ports of the copies its RECO_* settings run)")
    args = parser.parse_args()
    if bool(args.ingest_url) != bool(args.reco_url):
        parser.error("--ingest-url and --reco-url go together (neither: the soak's own stack)")
    attached = Settings() if args.ingest_url else None  # the shell's, taken as the stack's
    gap = auth_gap(attached) if attached is not None else None
    if gap:
        parser.error(f"refusing to soak a running stack that would answer 401: {gap}")
    stack = Stack()
    try:
        if attached is not None:
            stack.attach({"ingest": args.ingest_url, "recommendations": args.reco_url,
                          "processor": args.processor_metrics_url,
                          "archiver": args.archiver_metrics_url}, attached)
        else:
            stack.start()
        asyncio.run(stack.wait_for_lag())
        rss = {"ready": stack.rss_mb()}
        rec = Recorder(time.perf_counter())

        async def run() -> None:
            async def warm_snapshot() -> None:
                await asyncio.sleep(min(WARMUP_S, args.duration / 3))
                rss["warm"] = stack.rss_mb()

            await asyncio.gather(load(stack, args.duration, args.ingest_rate,
                                      args.reco_rate, rec), warm_snapshot())

        asyncio.run(run())
        rss["end"] = stack.rss_mb()
        drained = asyncio.run(drain(stack, rec))
        result = report(rec, rss, args, drained, stack.unwatched,
                        [name for name, _, _ in stack.components()])
    finally:
        stack.stop()
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    (REPORTS / "soak.md").write_text(markdown(result))
    print(markdown(result))
    sys.exit(EXIT_STATUS[result["status"]])


if __name__ == "__main__":
    main()
