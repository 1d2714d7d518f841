"""Recommendation API benchmark: realistic feature sizes in a real Redis, load from wrk and an
open-loop generator, next to a bare endpoint on the same server in the same run.

    .venv/bin/python benchmarks/reco_bench.py [--quick]

Writes benchmarks/reports/recommendations.{md,json} and prints the table. Needs redis-server
and wrk (apt-get install -y redis-server wrk). Loopback only; about three minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import redis
from fastapi import FastAPI
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from http_load import failed_requests, pct  # noqa: E402
from reco_bench_data import MixActions, Sizes, fill  # noqa: E402
from reco_bench_load import (  # noqa: E402
    BARE,
    RANDOM_USERS,
    SEQUENTIAL_USERS,
    OpenLoopRun,
    counters,
    delta,
    open_loop,
    progress,
    wrk,
)

from reco.settings import Settings  # noqa: E402
from reco.stack import servers as stack_servers  # noqa: E402
from reco.stack.health import free_port, http_ok, wait_until  # noqa: E402
from tests.servers import ServerProcess, remove, scratch_dir  # noqa: E402

REPORTS = ROOT / "benchmarks" / "reports"
TARGETS = {"miss_p99_ms": 15.0, "miss_vs_bare": 0.40, "hit_vs_bare": 0.70}
OPEN_RATE = 200  # requests/s of the fixed-rate miss and hit phases
# The hit ratio and its ceiling are ratios of counts: equal counts give equal floats, so any
# real shortfall is far larger than this.
CEILING_EPSILON = 1e-9


class CpuMeter:
    """CPU seconds each process of a phase used (API, Redis, the wrk children), per request.

    Throughput moves with whatever else the shared machine runs; the API's CPU time per request
    moves much less, so it is the figure to compare two versions of the code by."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.started = self._read()

    def _read(self) -> dict[str, float]:
        out = {name: _proc_cpu_s(pid) for name, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["wrk"] = children.ru_utime + children.ru_stime  # wrk runs as a waited-for child
        return out

    def per_request_us(self, requests: float) -> dict[str, float]:
        ended = self._read()
        return {name: (ended[name] - self.started[name]) / max(requests, 1.0) * 1e6
                for name in ended}


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15, after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stalls:
    """Event-loop lag and GC pauses inside the API process, per benchmark phase.

    A task sleeps `TICK_S` in a loop and records how late it wakes: a late wake-up is time the
    loop could not run anything (GC pause, a long callback, the process not scheduled).
    """

    TICK_S = 0.005

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)
        self.reset()

    def reset(self) -> None:
        self.lags: list[float] = []
        self.gc: dict[int, list[float]] = {g: [0, 0.0] for g in range(3)}  # count, max ms

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        stats = self.gc[info["generation"]]
        stats[0] += 1
        stats[1] = max(stats[1], (time.perf_counter() - self._gc_started) * 1000)

    async def _watch(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            self.lags.append((time.perf_counter() - started - self.TICK_S) * 1000)

    def read_and_reset(self) -> dict:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        lags = np.asarray(self.lags or [0.0])
        out = {"loop_lag_max_ms": float(lags.max()), "loop_lag_p99_ms": float(
            np.percentile(lags, 99)), "ticks_late_over_5ms": int((lags > 5).sum()),
            "ticks": len(self.lags),
            "gc": {f"gen{g}": {"count": int(c), "max_ms": round(m, 2)}
                   for g, (c, m) in self.gc.items()}}
        self.reset()
        return out


def bench_app() -> FastAPI:
    """The real app (settings from RECO_* env) plus a bare endpoint, served by one uvicorn."""
    from serving.reco_store import USER_KINDS
    from serving.recommendations import create_app

    app = create_app(Settings())
    stalls = Stalls()

    @app.get("/bare")
    async def bare() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/bench/stalls")
    async def bench_stalls() -> dict:
        return stalls.read_and_reset()

    @app.get("/bench/lists")
    async def bench_lists() -> dict:
        """The in-process list caches: lookups per kind ([hits, misses]) and sizes."""
        service = app.state.service
        lookups = {kind: service.user_lists.lookups[kind] if kind in USER_KINDS else n
                   for kind, n in service.lists.lookups.items()}
        return {"lookups": lookups,
                "entries": len(service.lists), "user_entries": len(service.user_lists),
                "max_entries": service.lists.max_entries,
                "max_user_entries": service.user_lists.max_entries}

    return app


def start_redis() -> ServerProcess:
    """Like tests/servers.start_redis but without persistence (the fill is ~1 GB)."""
    workdir = scratch_dir("bench-redis")
    port = free_port()
    cmd = stack_servers.redis_command(workdir / "data", port, persist=False)
    # co_view sets hold up to coview_max=200 members: a listpack up to 256 keeps them compact.
    cmd += ["--zset-max-listpack-entries", "256"]
    return ServerProcess("redis", cmd, port, workdir).start()


def start_api(redis_port: int, threads: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, RECO_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
               RECO_REDIS_IN_THREADS=str(threads).lower(), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "reco_bench:bench_app",
         "--app-dir", str(ROOT / "benchmarks"), "--host", "127.0.0.1", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
         "warning", "--timeout-keep-alive", "75"], env=env, cwd=ROOT)
    if not wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60,
                      alive=lambda: proc.poll() is None):
        proc.kill()
        raise RuntimeError("API did not start")
    return proc, port


PHASES = ("bare", "miss_max", "hit_max", "miss_200", "hit_200", "mix")


def run(quick: bool, threads: bool = False, phases: tuple[str, ...] = PHASES,
        profile: str | None = None) -> dict:
    s = Sizes(quick)
    seconds = 3 if quick else 6
    rng = np.random.default_rng(42)
    result: dict = {"sizes": vars(s), "loadavg_at_start": os.getloadavg(),
                    "cpu_pressure_at_start": cpu_pressure(),
                    "cpus": os.cpu_count(), "redis_in_threads": threads}
    server = start_redis()
    api = None
    try:
        r = redis.Redis(port=server.port)
        t0 = time.perf_counter()
        result["fill_s"] = fill(r, s, rng)
        result["fill_total_s"] = time.perf_counter() - t0
        progress("fill", result["fill_s"])
        result["redis_memory_mb"] = r.info("memory")["used_memory"] / 2**20
        t0 = time.perf_counter()  # startup loads the catalogue and popularity before serving
        api, port = start_api(server.port, threads)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/ready") and
                   httpx.get(f"{base}/ready").status_code == 200, 120)
        result["ready_after_s"] = time.perf_counter() - t0

        wrk(base, BARE, 2)  # warm-up
        wrk(base, SEQUENTIAL_USERS % (s.users // 2), 2)
        pids = {"api": api.pid, "redis": server.process.pid}
        result["bare"] = metered(pids, lambda: wrk(base, BARE, seconds))
        progress("bare", result["bare"])

        if "miss_max" in phases:
            lists_before = list_lookups(base)
            before = counters(base)
            spy = py_spy(api.pid, seconds, profile) if profile else None
            result["miss_max"] = metered(
                pids, lambda: wrk(base, SEQUENTIAL_USERS % (s.users // 10), seconds))
            if spy is not None:
                spy.wait(30)
            result["miss_max"]["cache"] = delta(before, counters(base))
            result["miss_max"]["lists"] = list_delta(lists_before, list_lookups(base))
            progress("miss_max", result["miss_max"])

        warm = min(1000, s.users // 10)
        if "hit_max" in phases or "hit_200" in phases:
            asyncio.run(open_loop(port, iter([f"/recommendations?user_id=u{n}&k=20"
                                              for n in range(warm)]), 500, warm / 500))
        if "hit_max" in phases:
            before = counters(base)
            result["hit_max"] = metered(
                pids, lambda: wrk(base, RANDOM_USERS % (warm - 1), seconds))
            result["hit_max"]["cache"] = delta(before, counters(base))
            progress("hit_max", result["hit_max"])

        if "miss_200" in phases:
            stalls(base)  # starts the watcher; what it saw so far is dropped
            lists_before = list_lookups(base)
            before = counters(base)
            first = int(s.users * 0.6)
            paths = iter([f"/recommendations?user_id=u{first + n}&k=20" for n in range(100_000)])
            result["miss_200"] = {"rate": OPEN_RATE, **open_loop_phase(asyncio.run(open_loop(
                port, paths, OPEN_RATE, 10 if not quick else 4)))}
            result["miss_200"]["cache"] = delta(before, counters(base))
            result["miss_200"]["lists"] = list_delta(lists_before, list_lookups(base))
            result["miss_200"]["stalls"] = stalls(base)
            progress("miss_200", result["miss_200"])

        if "hit_200" in phases:
            stalls(base)
            before = counters(base)
            paths = iter([f"/recommendations?user_id=u{n % warm}&k=20" for n in range(100_000)])
            result["hit_200"] = {"rate": OPEN_RATE, **open_loop_phase(asyncio.run(open_loop(
                port, paths, OPEN_RATE, 5 if not quick else 2)))}
            result["hit_200"]["cache"] = delta(before, counters(base))
            result["hit_200"]["stalls"] = stalls(base)
            progress("hit_200", result["hit_200"])

        if "mix" in phases:
            mix = {"active_users": 2000, "event_share": 0.2, "rate": 200,
                   "warmup_s": 10 if not quick else 3, "measure_s": 15 if not quick else 4}
            actions = MixActions(r, s, rng, int(s.users * 0.8), mix["active_users"],
                                  mix["event_share"])
            asyncio.run(open_loop(port, actions, mix["rate"], mix["warmup_s"]))
            stalls(base)
            actions.reset()
            lists_before = list_lookups(base)
            before = counters(base)
            # Its rate counts events too; the achieved req/s counts only the requests.
            mix["latency"] = open_loop_phase(asyncio.run(open_loop(port, actions, mix["rate"],
                                                                   mix["measure_s"])))
            mix["cache"] = delta(before, counters(base))
            mix["lists"] = list_delta(lists_before, list_lookups(base))
            # The best any cache that never ignores a user's latest event can do on this
            # sequence: a request can hit only if that user's previous action was a request.
            mix["requests"], mix["hittable"] = actions.requests, actions.hittable
            mix["ceiling"] = actions.hittable / max(1, actions.requests)
            mix["stalls"] = stalls(base)
            mix["hit_ratio"] = mix["cache"]["hits"] / max(1.0, sum(mix["cache"].values()))
            result["mix"] = mix
            progress("mix", result["mix"])
        result["loadavg_at_end"] = os.getloadavg()
        result["cpu_pressure_at_end"] = cpu_pressure()
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        remove(server)
    if set(phases) != set(PHASES):
        return result
    mix = result["mix"]
    result["checks"] = {
        "miss_p99_ms < 15 at 200 req/s": result["miss_200"]["p99_ms"] < TARGETS["miss_p99_ms"],
        "miss throughput >= 40% of bare": share_of_bare(result, "miss_max")
        >= TARGETS["miss_vs_bare"],
        "hit throughput >= 70% of bare": share_of_bare(result, "hit_max")
        >= TARGETS["hit_vs_bare"],
        "hit ratio > 80% (seed)": mix["hit_ratio"] > 0.8,
        "hit ratio reaches the ceiling": mix["hit_ratio"] >= mix["ceiling"] - CEILING_EPSILON,
    }
    return result


def open_loop_phase(run: OpenLoopRun) -> dict:
    """Latency percentiles and the throughput achieved: requests answered over the time from
    the first scheduled send to the last answer (not the rate asked for)."""
    return {**pct(run.latencies), "duration_s": run.duration_s,
            "achieved_rps": len(run.latencies) / run.duration_s}


def share_of_bare(res: dict, phase: str) -> float:
    """A wrk phase's throughput over bare's; NaN (every comparison False) when either phase
    had a non-2xx answer or a socket error, since failing fast is not serving fast."""
    if failed_requests(res["bare"]) or failed_requests(res[phase]):
        return float("nan")
    return res[phase]["rps"] / res["bare"]["rps"]


def metered(pids: dict[str, int], phase: Callable[[], dict]) -> dict:
    """Run a wrk phase and add each process's CPU microseconds per request to its result."""
    meter = CpuMeter(pids)
    out = phase()
    out["cpu_us_per_request"] = meter.per_request_us(out["requests"])
    return out


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    """Sample the API process with py-spy (collapsed stacks) while a phase runs."""
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                             str(pid), "--duration", str(int(seconds)), "--format", "raw",
                             "--nonblocking", "--output", out], stdout=subprocess.DEVNULL)


def summary(res: dict) -> str:
    """One line per phase that ran: throughput and its share of bare, or latency."""
    lines = [f"load average {res['loadavg_at_start'][0]:.1f} at start"]
    for name in PHASES:
        phase = res.get(name)
        if phase is None:
            continue
        phase = phase.get("latency", phase)
        line = f"{name}: p50 {phase['p50_ms']:.2f} ms, p99 {phase['p99_ms']:.2f} ms"
        if "rps" in phase:
            share = of_bare(res, name)
            share = "share of bare invalid" if share == "invalid" else f"{share} of bare"
            line += (f", {phase['rps']:,.0f} req/s ({share}), non-2xx {phase['non_2xx']}, "
                     f"socket errors {phase['socket_errors']}")
        if "achieved_rps" in phase:
            line += f", {phase['achieved_rps']:,.0f} req/s achieved"
        if "cpu_us_per_request" in phase:
            line += ", CPU us/request " + ", ".join(
                f"{k} {v:.0f}" for k, v in phase["cpu_us_per_request"].items())
        lines.append(line)
    return "\n".join(lines)


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 60 s in which some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split("avg60=")[1].split()[0])


def list_lookups(base: str) -> dict:
    return httpx.get(f"{base}/bench/lists").json()


def list_delta(before: dict, after: dict) -> dict:
    """Hit ratio per list kind over a phase, and the caches' sizes at its end."""
    out: dict = {}
    for kind, (hits, misses) in after["lookups"].items():
        h, m = hits - before["lookups"][kind][0], misses - before["lookups"][kind][1]
        if h + m:
            out[kind] = {"hits": h, "misses": m, "hit_ratio": h / (h + m)}
    out["entries"] = {"items": after["entries"], "users": after["user_entries"],
                      "max_items": after["max_entries"], "max_users": after["max_user_entries"]}
    return out


def list_lines(res: dict) -> str:
    lines = []
    for name, phase in (("cache miss, max", res["miss_max"]), ("cache miss 200/s",
                                                                res["miss_200"]),
                        ("mix 200/s", res["mix"])):
        lists = phase["lists"]
        kinds = ", ".join(f"{kind} {v['hit_ratio']:.1%} of {v['hits'] + v['misses']:,}"
                          for kind, v in lists.items() if kind != "entries")
        e = lists["entries"]
        lines.append(f"- {name}: {kinds}; entries at the end {e['items']:,} item lists (bound "
                     f"{e['max_items']:,}) and {e['users']:,} user lists (bound "
                     f"{e['max_users']:,})")
    return "\n".join(lines)


def stalls(base: str) -> dict:
    return httpx.get(f"{base}/bench/stalls").json()


def stall_lines(res: dict) -> str:
    lines = []
    for name, phase in (("cache miss 200/s", res["miss_200"]), ("cache hit 200/s", res["hit_200"]),
                        ("mix 200/s", res["mix"])):
        st = phase["stalls"]
        gcs = ", ".join(f"{g} {v['count']}x max {v['max_ms']:.1f} ms" for g, v in st["gc"].items())
        lines.append(f"- {name}: loop lag max {st['loop_lag_max_ms']:.1f} ms, p99 "
                     f"{st['loop_lag_p99_ms']:.1f} ms, {st['ticks_late_over_5ms']} of "
                     f"{st['ticks']} ticks late by > 5 ms; GC {gcs}")
    return "\n".join(lines)


def of_bare(res: dict, phase: str) -> str:
    share = share_of_bare(res, phase)
    return "invalid" if math.isnan(share) else f"{share:.0%}"


def table(res: dict) -> str:
    bare = res["bare"]["rps"]
    mix = res["mix"]

    def cpu(phase: str) -> str:
        used = res[phase]["cpu_us_per_request"]
        return f"{used['api']:.0f} / {used['redis']:.0f} / {used['wrk']:.0f}"

    def achieved(phase: dict) -> str:
        return f"{phase['achieved_rps']:,.0f}"

    rows = [
        ("bare endpoint, max (wrk 16 conn)", f"{bare:,.0f}", res["bare"]["p50_ms"],
         res["bare"]["p99_ms"], of_bare(res, "bare"), cpu("bare")),
        ("cache miss, max (wrk 16 conn)", f"{res['miss_max']['rps']:,.0f}",
         res["miss_max"]["p50_ms"], res["miss_max"]["p99_ms"], of_bare(res, "miss_max"),
         cpu("miss_max")),
        ("cache hit, max (wrk 16 conn)", f"{res['hit_max']['rps']:,.0f}",
         res["hit_max"]["p50_ms"], res["hit_max"]["p99_ms"], of_bare(res, "hit_max"),
         cpu("hit_max")),
        (f"cache miss, open loop {res['miss_200']['rate']:g} req/s",
         achieved(res["miss_200"]), res["miss_200"]["p50_ms"], res["miss_200"]["p99_ms"], "", ""),
        (f"cache hit, open loop {res['hit_200']['rate']:g} req/s",
         achieved(res["hit_200"]), res["hit_200"]["p50_ms"], res["hit_200"]["p99_ms"], "", ""),
        (f"mix: {mix['event_share']:.0%} events, {mix['active_users']:,} Zipf users, "
         f"{mix['rate']:g} actions/s", achieved(mix["latency"]), mix["latency"]["p50_ms"],
         mix["latency"]["p99_ms"], "", ""),
    ]
    lines = ["| scenario | req/s | p50 ms | p99 ms | of bare | CPU us/request: API / Redis / wrk |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c:.2f} | {d:.2f} | {e} | {f} |" for a, b, c, d, e, f in rows]
    lines.append("\nFailed requests of the max-throughput phases (non-2xx / socket errors): "
                 + ", ".join(f"{name} {res[name]['non_2xx']} / {res[name]['socket_errors']}"
                             for name in ("bare", "miss_max", "hit_max"))
                 + "; any makes the phase's share of bare invalid and its check FAIL. The "
                 "open-loop rows' req/s is the requests answered over the phase's measured "
                 "duration (the mix's events are not requests); a non-200 answer there stops "
                 "the run.")
    lines.append(f"\nCache hit ratio under the mix: **{mix['hit_ratio']:.1%}** "
                 f"({mix['cache']['hits']:.0f} hits, {mix['cache']['misses']:.0f} misses); "
                 f"the ceiling for this action sequence is {mix['ceiling']:.1%} "
                 f"({mix['hittable']:,} of {mix['requests']:,} requests came after an answered "
                 f"request of the same user with no event between), so the cache got "
                 f"{mix['hit_ratio'] / max(mix['ceiling'], 1e-9):.0%} of the hits it could.")
    lines.append("\nChecks: " + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}"
                                          for k, v in res["checks"].items()))
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def write_report(res: dict, name: str = "recommendations") -> str:
    s = res["sizes"]
    fill = ", ".join(f"{k} {v:.1f}s" for k, v in res["fill_s"].items())
    md = f"""# Recommendation API benchmark

Generated by `benchmarks/reco_bench.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

Data: {s['items']:,} items with metadata, {s['users']:,} users with {s['recent']} recent items
(and last-touch times) and seen sets of {s['recent'] + s['seen_before_recent']} (those and
{s['seen_before_recent']} touched before), co-view sets of {s['coview']}, Item2Vec KNN lists of
{s['knn']}, ALS item-item and user lists of {s['cf']}, SASRec user lists of {s['seq']}: every
list the served configuration blends ({s['pool']} distinct payloads copied across keys). Redis used
{res['redis_memory_mb']:,.0f} MB; fill took {res['fill_total_s']:.0f} s ({fill}); the API
was ready (catalogue + popularity loaded) {res['ready_after_s']:.1f} s after its process started.

One uvicorn worker (uvloop, httptools), Redis and the load generators on the same \
{res['cpus']}-core machine, shared with other work: load average \
{res['loadavg_at_start'][0]:.1f} at the start and {res['loadavg_at_end'][0]:.1f} at the end; CPU \
pressure (share of the previous minute in which some runnable task waited for a core) \
{_pct(res['cpu_pressure_at_start'])} and {_pct(res['cpu_pressure_at_end'])}. Absolute numbers \
move between runs; the ratios to the bare endpoint measured in the same run are the comparable \
figures. Max throughput: wrk, 1 thread, 16 connections. Fixed rates: an open-loop asyncio \
generator, latency measured from each request's scheduled send time.
Cache-miss phases use each user once; hit phases re-ask 1,000 warmed users. The CPU column
is each process's CPU time over the phase divided by the requests served (from /proc and
wrk's rusage): it moves much less between runs than throughput, and the API's share is what a
change to the serving code changes.

{table(res)}

Event-loop stalls inside the API during the open-loop phases (a task waking every 5 ms
records how late it wakes; GC pauses from `gc.callbacks`):

{stall_lines(res)}

In-process list caches (parsed co-view sets for `reco_coview_cache_ttl_s`, KNN lists and
the users' ALS/SASRec lists per model version; bounded by `reco_list_cache_items` entries),
hit ratio per kind of lookup during the phase:

{list_lines(res)}

Phase cache counters (misses/hits): miss max {res['miss_max']['cache']}, hit max
{res['hit_max']['cache']}, miss 200/s {res['miss_200']['cache']}, hit 200/s
{res['hit_200']['cache']}.

Notes:
- The cache must never ignore a user's latest event, so every event makes that user's next
  request a miss: with {res['mix']['event_share']:.0%} of a user's actions being events the hit
  ratio cannot exceed {1 - res['mix']['event_share']:.0%}, less the first request of every user
  not seen before (the Zipf tail: {res['mix']['active_users']:,} users, most acting once or twice
  in the run). The ceiling above counts that on the sequence sent, leaving out requests sent
  while the user's previous one was unanswered: those may hit or not (a race the cache can
  win), so the hits can exceed the ceiling by a few, and a ratio at the ceiling means at most
  as many allowed hits were missed as races were won.
- A cache miss does two pipelined Redis round trips (cache entry, recent list and model
  versions; then last-touch times, the source items' lists not already parsed in process, the
  user's ALS and SASRec lists and seen set) and ranks ~670 entries in one compiled pass
  (reco/scoring.py: 20 of each co-view, KNN and ALS item list of the 5 newest recent items,
  the user's two lists of 100, 170 popular rows); a hit does one round trip.
- The API reads Redis through a pipelined asyncio client (serving/reco_aio.py: the loop serves
  other requests during a round trip) and refreshes its popularity snapshot on the loop in
  slices of 250 members. GET /recommendations is a plain ASGI endpoint dispatched ahead of
  FastAPI's router (serving/reco_route.py), while the bare endpoint is an ordinary FastAPI
  route: a cache hit can therefore be served faster than the bare endpoint.
- Redis runs with `zset-max-listpack-entries 256` so that co-view sets (at most 200 members)
  stay compact.
"""
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name}.md").write_text(md)
    (REPORTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=float))
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the data, short phases")
    parser.add_argument("--threads", action="store_true",
                        help="serve with feature reads in a threadpool (RECO_REDIS_IN_THREADS)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated subset of " + ",".join(PHASES) + " (the bare "
                        "endpoint always runs); a subset prints ratios and writes no report")
    parser.add_argument("--profile", metavar="PATH",
                        help="py-spy the API during miss_max into PATH (collapsed stacks)")
    args = parser.parse_args()
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    res = run(args.quick, args.threads, phases, args.profile)
    if set(phases) != set(PHASES):
        print(summary(res))
        return
    # A quick run never replaces the full run's report.
    write_report(res, "recommendations" if not args.quick else "recommendations-quick")
    print(table(res))


if __name__ == "__main__":
    main()
