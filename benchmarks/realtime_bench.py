"""Real-time path benchmark: ingest API (single + batch) next to a bare endpoint on the same
server, processor events/s, and end-to-end lag (POST -> feature visible in Redis).

    .venv/bin/python benchmarks/realtime_bench.py [--processor-only | --ingest-only | --lag-only]
                                                  [--same-priority]

Starts its own Kafka, Redis and PostgreSQL (tests/servers.py), one uvicorn worker for the
ingest app and `reco run processor` in subprocesses, all at niceness NICENESS when allowed.
Loopback only; about six minutes.
Writes benchmarks/reports/realtime.{md,json} and prints the table. Needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realtime_load import MAX_CONNECTIONS, closed_batches, open_loop, pct, wrk  # noqa: E402, I001
from http_load import failed_requests  # noqa: E402

from reco import db, keys  # noqa: E402
from reco.events import Event  # noqa: E402
from reco.features import FeatureParams, plan_batch  # noqa: E402
from reco.settings import Settings  # noqa: E402
from reco.stack import servers as stack_servers  # noqa: E402
from reco.stack.health import free_port, http_ok, wait_until  # noqa: E402
from reco.topics import ensure_topics  # noqa: E402
from tests import servers  # noqa: E402

REPORTS = ROOT / "benchmarks" / "reports"
SECONDS = 6.0
# A fresh broker JVM compiles its produce path during its first ~25 s of single-event load:
# on a new broker, 1,000 POSTs/s in 4 s rounds gave p50 37/33/19/26/11 ms while its JIT
# threads took 0.1-0.3 core and its request threads ~2x the CPU per event, then 4-7 ms. A
# running broker is past that, so the ingest phases start after this much of that load.
BROKER_WARM_S = 75.0
# Niceness of the benchmark and of every process it starts (they inherit it): ahead of
# unrelated work on a shared machine, while its own servers still share the cores as equals.
NICENESS = -10


def bench_app() -> FastAPI:
    """The real ingest app (settings from RECO_* env) plus a bare endpoint, one uvicorn."""
    from serving.ingest import create_app

    app = create_app(Settings())

    @app.post("/bench/bare")
    async def bare(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', 202, media_type="application/json")

    return app


# --- workload ----------------------------------------------------------------------------


def workload(n: int, users: int, items: int, seed: int = 7) -> list[Event]:
    """Shoppers over the last 50 minutes: random users, Zipf-like item popularity, mixed types."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(items)]
    item_ids = rng.choices(range(items), weights, k=n)
    types = rng.choices(["view", "click", "cart", "purchase"], [70, 20, 7, 3], k=n)
    start_ms = int((time.time() - 3000) * 1000)
    return [Event(user_id=f"u{rng.randrange(users)}", item_id=f"i{item_ids[k]}",
                  event_type=types[k], timestamp=start_ms + k * 3000 * 1000 // n)
            for k in range(n)]


def coview_pairs_per_event(events: list[Event], settings: Settings) -> float:
    # An infinite half-life makes every pair's affinity 1: the sum counts pairs.
    params = dataclasses.replace(FeatureParams.from_settings(settings),
                                 coview_half_life_s=math.inf)
    up = plan_batch(events, {}, {}, params, time.time())
    return sum(sum(p.values()) for p in up.coview.values()) / 2 / len(events)


async def prefill(settings: Settings, topic: str, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, max_batch_size=512 * 1024,
                                linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, e.to_json_bytes(), key=e.user_id.encode())
                   for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- processes ---------------------------------------------------------------------------


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RECO_REDIS_URL": settings.redis_url,
            "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_PG_PORT": str(settings.pg_port),
            "RECO_TOPIC_EVENTS": settings.topic_events, **extra}


def start_ingest(settings: Settings) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "realtime_bench:bench_app",
         "--app-dir", str(ROOT / "benchmarks"), "--host", "127.0.0.1", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
         "--timeout-keep-alive", "120"],  # idle pooled connections must stay open
        env=env_of(settings), cwd=tempfile.gettempdir())
    if not wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 60,
                      alive=lambda: proc.poll() is None):
        proc.kill()
        raise RuntimeError("ingest API did not start")
    return proc, port


def start_processor(settings: Settings, topic: str, group: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reco.cli", "run", "processor"], cwd=tempfile.gettempdir(),
        env=env_of(settings, RECO_TOPIC_EVENTS=topic, RECO_GROUP_PROCESSOR=group,
                   RECO_PROCESSOR_METRICS_PORT=str(port)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def processed(metrics_port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
               if x.startswith("events_processed_total{"))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- phases ------------------------------------------------------------------------------


def one_event(user: str = "u1", item: str = "i1") -> bytes:
    return orjson.dumps({"user_id": user, "item_id": item, "event_type": "view"})


async def bench_ingest(port: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    res: dict = {}
    await warm_broker(port)
    wrk(base + "/bench/bare", one_event(), 2)  # warm-up
    wrk(base + "/events", one_event(), 2)
    res["bare_max"] = wrk(base + "/bench/bare", one_event(), SECONDS)
    res["event_max"] = wrk(base + "/events", one_event(), SECONDS)
    print("max", res["bare_max"], res["event_max"], flush=True)
    rng = random.Random(3)
    bodies = [one_event(f"u{rng.randrange(10_000)}", f"i{rng.randrange(5_000)}")
              for _ in range(int(1000 * SECONDS))]

    for rate in (500, 1000):
        for name, path in (("bare", "/bench/bare"), ("event", "/events")):
            out = await asyncio.to_thread(open_loop, port, path, bodies, rate, SECONDS)
            out.pop("sent")
            res[f"{name}_{rate}"] = out
            print(name, rate, out, flush=True)

    def batch_body() -> tuple[bytes, int]:
        events = [{"user_id": f"u{rng.randrange(10_000)}", "item_id": f"i{rng.randrange(5_000)}",
                   "event_type": "view"} for _ in range(1000)]
        return orjson.dumps({"events": events}), 1000

    await closed_batches(port, batch_body, 2, 2)  # warm-up
    res["batch"] = await closed_batches(port, batch_body, 2, SECONDS)
    print("batch", res["batch"], flush=True)
    return res


async def warm_broker(port: int) -> None:
    """BROKER_WARM_S of single-event POSTs at 1,000/s, not measured."""
    rng = random.Random(1)
    bodies = [one_event(f"u{rng.randrange(10_000)}", f"i{rng.randrange(5_000)}")
              for _ in range(10_000)]
    if BROKER_WARM_S > 0:
        await asyncio.to_thread(open_loop, port, "/events", bodies, 1000, BROKER_WARM_S)


async def bench_processor(settings: Settings, n: int) -> dict:
    topic = "prefill"
    await ensure_topics(settings.kafka_bootstrap, {topic: settings.topic_partitions})
    events = workload(n, users=20_000, items=5_000)
    t = time.perf_counter()
    await prefill(settings, topic, events)
    prefill_s = time.perf_counter() - t
    proc, port = start_processor(settings, topic, "bench-drain")
    try:
        wait_until(lambda: processed(port) > 0, 60, interval_s=0.05)
        first, t0 = processed(port), time.perf_counter()
        wait_until(lambda: processed(port) >= n, 300, interval_s=0.1)
        elapsed = time.perf_counter() - t0
        done = processed(port)
    finally:
        stop(proc)
    return {"events": n, "events_per_s": (done - first) / elapsed, "prefill_s": prefill_s,
            "coview_pairs_per_event": coview_pairs_per_event(events, settings)}


LAG_BATCH = 20  # events per POST of the batched lag phase


async def bench_lag(settings: Settings, rate: float, per_post: int = 1) -> dict:
    """`rate` events/s in POSTs of `per_post` events (POST /events when 1, else
    /events/batch); the processor's `event:seen` marker is written in the same transaction
    as the features, so its keyspace notification times feature visibility."""
    r = redis.Redis.from_url(settings.redis_url)
    r.config_set("notify-keyspace-events", "K$")
    proc, metrics_port = start_processor(settings, settings.topic_events, "bench-lag")
    ingest, port = start_ingest(settings)
    visible: dict[str, float] = {}
    try:
        wait_until(lambda: processed(metrics_port) >= 0 and http_ok(
            f"http://127.0.0.1:{metrics_port}/metrics"), 60)
        await asyncio.to_thread(open_loop, port, "/events", [one_event("warm", "up")], 50, 1)
        wait_until(lambda: processed(metrics_port) >= 50, 60)
        pubsub = r.pubsub()
        marker = keys.event_seen("")  # the channel is this prefix plus the event id
        pubsub.psubscribe(f"__keyspace@*__:{marker}*")

        deadline = time.monotonic() + SECONDS + 60

        def listen() -> None:
            while len(visible) < int(rate * SECONDS) and time.monotonic() < deadline:
                msg = pubsub.get_message(timeout=0.5)
                if msg is not None and msg["type"] == "pmessage":
                    channel = msg["channel"].decode()
                    visible.setdefault(channel[channel.index(marker) + len(marker):],
                                       time.time())

        listener = asyncio.get_running_loop().run_in_executor(None, listen)
        rng = random.Random(5)
        events = [{"event_id": str(uuid.uuid4()), "event_type": "view",
                   "user_id": f"u{rng.randrange(10_000)}", "item_id": f"i{rng.randrange(5_000)}"}
                  for _ in range(int(rate * SECONDS))]
        if per_post == 1:
            path, bodies = "/events", [orjson.dumps(e) for e in events]
        else:
            path = "/events/batch"
            bodies = [orjson.dumps({"events": events[k:k + per_post]})
                      for k in range(0, len(events), per_post)]
        # The generator is a child process: this one only listens (no GIL shared with it).
        out = await asyncio.to_thread(open_loop, port, path, bodies, rate / per_post, SECONDS)
        await listener
        pubsub.close()
    finally:
        stop(ingest)
        stop(proc)
    ids = {e["event_id"]: times for b, times in out["sent"].items()
           for e in (orjson.loads(b)["events"] if per_post > 1 else [orjson.loads(b)])}
    seen = [(visible[i], sent, acked) for i, (sent, acked) in ids.items() if i in visible]
    # The processor's share: from the 202 (the broker has the event) to the Redis write.
    after_ack = pct([(v - acked) * 1000 for v, _, acked in seen])
    return {"rate": rate, "per_post": per_post, "post_p50_ms": out["p50_ms"],
            "post_p99_ms": out["p99_ms"], "post_failed": out["failed"],
            "not_visible": len(ids) - len(seen),
            "ack_to_visible_p50_ms": after_ack["p50_ms"],
            "ack_to_visible_p99_ms": after_ack["p99_ms"],
            **pct([(v - sent) * 1000 for v, sent, _ in seen])}


def run(processor_only: bool = False, ingest_only: bool = False, lag_only: bool = False) -> dict:
    kafka, redis_server, postgres = servers.start_kafka(), servers.start_redis(), \
        servers.start_postgres()
    try:
        settings = Settings(kafka_bootstrap=f"127.0.0.1:{kafka.port}", pg_port=postgres.port,
                            redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
        wait_until(lambda: _databases_ready(settings), 60, interval_s=0.5)
        db.migrate(settings)
        if processor_only:
            return {"processor": asyncio.run(bench_processor(settings, 100_000))}
        asyncio.run(ensure_topics(settings.kafka_bootstrap,
                                  {settings.topic_events: settings.topic_partitions}))
        if lag_only:  # as in the full run, where the lag phase comes last: on a warm broker
            ingest, port = start_ingest(settings)
            try:
                asyncio.run(warm_broker(port))
            finally:
                stop(ingest)
            settings = _lag_settings(settings)
            return {"lag": asyncio.run(bench_lag(settings, 2000)),
                    "lag_batch": asyncio.run(bench_lag(settings, 2000, LAG_BATCH))}
        ingest, port = start_ingest(settings)
        try:
            result = {"ingest": asyncio.run(bench_ingest(port))}
        finally:
            stop(ingest)
        if ingest_only:
            return result
        settings = _lag_settings(settings)
        result["processor"] = asyncio.run(bench_processor(settings, 100_000))
        print("processor", result["processor"], flush=True)
        result["lag"] = asyncio.run(bench_lag(settings, 2000))
        result["lag_batch"] = asyncio.run(bench_lag(settings, 2000, LAG_BATCH))
        return result
    finally:
        for server in (kafka, redis_server, postgres):
            servers.remove(server)


def _lag_settings(settings: Settings) -> Settings:
    """A fresh topic for the lag phase: the processor starts with no backlog."""
    settings = settings.model_copy(update={"topic_events": "events-lag"})
    asyncio.run(ensure_topics(settings.kafka_bootstrap, {"events-lag": 3}))
    return settings


def _databases_ready(settings: Settings) -> bool:
    """Create the app database once PostgreSQL accepts connections (it may still be starting)."""
    try:
        stack_servers.ensure_databases(settings.pg_port, settings.pg_user,
                                       settings.pg_password.get_secret_value(),
                                       [settings.pg_database])
    except Exception:  # noqa: BLE001 - "the database system is starting up"
        return False
    return True


def table(res: dict) -> str:
    p = res["processor"]
    rows = ingest_rows(res["ingest"]) + [
        (f"processor drain ({p['events']:,} events, 1 process)",
         f"{p['events_per_s']:,.0f} ev/s",
         f"{p['coview_pairs_per_event']:.2f} co-view pairs/event",
         "yes" if p["events_per_s"] >= 10_000 else "NO"),
        lag_row(res["lag"]),
        lag_row(res["lag_batch"]),
    ]
    lines = ["| measurement | value | context | target met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n\n" + failed_line(res["ingest"])


def failed_line(i: dict) -> str:
    return ("Failed requests of the max-throughput phases (non-2xx / socket errors): "
            + ", ".join(f"{name} {i[name].get('non_2xx', 0)} / {i[name].get('socket_errors', 0)}"
                        for name in ("bare_max", "event_max"))
            + "; any makes the share of bare invalid and its target NOT met.")


def lag_row(lag: dict) -> tuple[str, str, str, str]:
    how = ("single-event POSTs" if lag["per_post"] == 1 else
           f"POSTs of {lag['per_post']} to /events/batch")
    return (f"lag POST -> Redis at {lag['rate']:.0f} ev/s, {how}: p50 / p99 / max ms",
            f"{lag['p50_ms']:.0f} / {lag['p99_ms']:.0f} / {lag['max_ms']:.0f}",
            f"POST p50 / p99 {lag['post_p50_ms']:.1f} / {lag['post_p99_ms']:.1f} ms; "
            f"202 -> Redis p50 / p99 {lag['ack_to_visible_p50_ms']:.0f} / "
            f"{lag['ack_to_visible_p99_ms']:.0f} ms; "
            f"{lag['post_failed']} POSTs not 202; {lag['not_visible']} acked not seen",
            # Failed POSTs are not in the lag samples: they must fail the target themselves.
            "yes" if lag["p99_ms"] < 1000 and not lag["not_visible"] and not lag["post_failed"]
            else "NO")


def ingest_rows(i: dict) -> list[tuple[str, str, str, str]]:
    bare, event = i["bare_max"]["rps"], i["event_max"]["rps"]
    # An endpoint answering errors fast would look fast: no share of bare from failed requests.
    valid = not failed_requests(i["bare_max"]) and not failed_requests(i["event_max"])
    rows = [
        ("bare endpoint max (wrk, 64 conn)", f"{bare:,.0f} req/s", "", ""),
        ("POST /events max (wrk, 64 conn)", f"{event:,.0f} ev/s",
         f"{event / bare:.0%} of bare" if valid else "share of bare invalid (failed requests)",
         "yes" if valid and event / bare >= 0.6 else "NO"),
    ]
    for rate in (500, 1000):
        b, e = i[f"bare_{rate}"], i[f"event_{rate}"]
        rows.append((f"POST /events at {rate}/s: p50 / p99 / max ms",
                     f"{e['p50_ms']:.1f} / {e['p99_ms']:.1f} / {e['max_ms']:.1f}",
                     f"bare {b['p50_ms']:.1f} / {b['p99_ms']:.1f}; {e['failed']} not 202",
                     ("yes" if e["p99_ms"] < 10 and not e["failed"] else "NO")
                     if rate == 1000 else ""))
    rows.append(
        ("POST /events/batch (1,000/req, 2 conn)", f"{i['batch']['events_per_s']:,.0f} ev/s",
         f"p50 {i['batch']['p50_ms']:.0f} ms / p99 {i['batch']['p99_ms']:.0f} ms per batch",
         "yes" if i["batch"]["events_per_s"] >= 20_000 else "NO"))
    return rows


def raise_priority() -> int:
    """Set NICENESS if allowed (root or CAP_SYS_NICE); the niceness in effect."""
    try:
        return os.nice(NICENESS - os.nice(0))
    except PermissionError:
        return os.nice(0)


def main() -> None:
    # SIGTERM unwinds through run()'s finally, so the servers it started are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--processor-only", action="store_true",
                      help="just the processor drain phase; no report is written")
    only.add_argument("--ingest-only", action="store_true",
                      help="just the ingest phases; no report is written")
    only.add_argument("--lag-only", action="store_true",
                      help="just the end-to-end lag phases; no report is written")
    ap.add_argument("--same-priority", action="store_true",
                    help=f"compete with other work on the machine (no niceness {NICENESS})")
    args = ap.parse_args()
    niceness = os.nice(0) if args.same_priority else raise_priority()
    print(f"niceness {niceness}", flush=True)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if args.processor_only:
        p = run(processor_only=True)["processor"]
        print(f"processor drain ({p['events']:,} events, 1 process): "
              f"{p['events_per_s']:,.0f} ev/s; 1-minute load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after")
        return
    if args.ingest_only:
        ingest = run(ingest_only=True)["ingest"]
        print("\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ingest_rows(ingest)))
        print(failed_line(ingest))
        print(f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
        return
    if args.lag_only:
        res = run(lag_only=True)
        for lag in (res["lag"], res["lag_batch"]):
            print("| {} | {} | {} | {} |".format(*lag_row(lag)))
        print(f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
        return
    res = run()
    res["load_avg_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    res["niceness"] = niceness
    res["wall_s"] = time.perf_counter() - started
    text = table(res)
    priority = (f"every process of the benchmark at niceness {niceness}, ahead of unrelated "
                "work on the machine (`--same-priority` to compete with it)" if niceness < 0 else
                f"niceness {niceness}, competing with whatever else runs on the machine")
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "realtime.json").write_text(json.dumps(res, indent=2))
    (REPORTS / "realtime.md").write_text(f"""# Real-time path benchmark

{text}

Targets (issue 3): ingest p99 < 10 ms at 1,000 events/s; single-event throughput >= 60% of the
bare endpoint; >= 20,000 events/s through the batch endpoint; processor >= 10,000 events/s per
process; lag p99 < 1 s at 2,000 events/s.

Setup: one machine ({os.cpu_count()} cores, shared with Kafka, Redis, PostgreSQL and the load
generators). Ingest: one uvicorn worker (uvloop, httptools), librdkafka producer (acks=all,
idempotent, linger 1 ms); the bare endpoint (POST, reads the body, answers 202) is mounted on
the same app in the same process. The ingest phases start after {BROKER_WARM_S:.0f} s of 1,000
POSTs/s that are not measured (a fresh broker JVM compiles its produce path meanwhile, for
about a minute of that load here; a running one has). Max throughput: wrk, 1 thread, 64
connections, {SECONDS:.0f} s. Fixed rates: an open-loop generator in a child process (plain
callbacks on uvloop, keep-alive connections, at most {MAX_CONNECTIONS} in flight); latency counts
from each request's scheduled send time, so a late send or a wait for a connection counts.
Processor: one `reco run processor` process draining a pre-filled
3-partition topic (20,000 users, 5,000 items, Zipf-like items, 70/20/7/3
view/click/cart/purchase over 50 minutes), Redis with AOF (everysec),
as the stack runs it. Lag: the processor's `event:seen` marker is written in the same
MULTI/EXEC as the features; its keyspace notification time minus the POST's scheduled send
time ("202 -> Redis": minus the time the 202 arrived, the processor's share). Lag phases run
after the processor phase (its consumer's broker paths are compiled by then), single-event
POSTs first, then the same event rate in POSTs of {LAG_BATCH} events.
Priority: {priority}.
Wall time {res['wall_s']:.0f} s; 1-minute load average {res['load_avg_1m']['before']:.1f} before,
{res['load_avg_1m']['after']:.1f} after (other work on the machine distorts the figures).
Regenerate: `.venv/bin/python benchmarks/realtime_bench.py`.
""")
    print(text)


if __name__ == "__main__":
    main()
