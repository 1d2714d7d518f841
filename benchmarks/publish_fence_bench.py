"""What fencing the publish's writes by its lock costs: publish time and how long Redis stalls.

    .venv/bin/python benchmarks/publish_fence_bench.py [--lists 100000] [--turns 5]

A publish writes a version's lists in batches of `--batch` (RECO_PUBLISH_BATCH's default).
Before the fence each batch was one non-transactional pipeline; fenced (`spark_jobs.publish
._write`), each batch runs as WATCH of the publish lock, GET of its token, then MULTI/EXEC
transactions of at most `publish.FENCE_BATCH` commands. Redis runs a transaction's commands
back to back, serving no other client meanwhile, so the transaction's size sets how long every
API request may wait. Measured: the unfenced pipeline, and the fenced write with 5,000, 1,000
and FENCE_BATCH commands per EXEC, `--lists` lists of ~1.6 KB each, taking turns (a first
turn warms up and is not counted).

Redis 7 keeps EXEC out of SLOWLOG (only the commands inside it are logged, each alone), so
EXEC's duration comes from its latency histogram (`INFO latencystats`, p100 = the longest).
A probe process GETs a small key every millisecond meanwhile: what a request waited. Redis is
the tests' (append-only file, fsync every second, as docker-compose.yml runs it), emptied and
its AOF rewritten before each run, automatic rewrites off. Writes
benchmarks/reports/publish_fence.md and prints its table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import redis
from redis.lock import Lock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reco import keys, neighbours  # noqa: E402
from spark_jobs import publish  # noqa: E402
from tests.servers import remove, start_redis  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "publish_fence.md"
Lists = list[tuple[str, bytes]]


def make_lists(count: int) -> list[bytes]:
    """Users' lists as published (ids, scores, codes): 55 candidates, ~1.6 KB each."""
    rng = np.random.default_rng(0)
    scores = np.round(np.sort(rng.random((count, 55)))[:, ::-1], 6)
    codes = rng.integers(0, 100_000, (count, 55))
    return [neighbours.encode([f"item-{c:06d}" for c in row], scores[n], row)
            for n, row in enumerate(codes)]


def unfenced(client: redis.Redis, lock: Lock, lists: Lists, batch: int) -> None:
    """The write before the fence (spark_jobs/publish.py at 5c49bb4): renewed after each
    pipelined batch, so a publisher that lost the lock still wrote one batch."""
    pipe = client.pipeline(transaction=False)
    for key, value in lists:
        pipe.set(key, value)
        if len(pipe) >= batch:
            pipe.execute()
            publish.renew(lock)
    pipe.execute()
    publish.renew(lock)


def fenced(per_exec: int) -> Callable[[redis.Redis, Lock, Lists, int], None]:
    def write(client: redis.Redis, lock: Lock, lists: Lists, batch: int) -> None:
        shipped, publish.FENCE_BATCH = publish.FENCE_BATCH, per_exec
        try:
            publish._write(client, lock, iter(lists), batch, None)
        finally:
            publish.FENCE_BATCH = shipped
    return write


def probe(port: int, stop, results) -> None:
    """GET a small key every millisecond until `stop`; send back every round trip's ms."""
    client = redis.Redis(port=port)
    waits: list[float] = []
    while not stop.is_set():
        began = time.perf_counter()
        client.get("probe")
        waits.append((time.perf_counter() - began) * 1000)
        time.sleep(0.001)
    results.put(waits)


def latencies(client: redis.Redis) -> dict[str, dict[str, float]]:
    """Per command: p50/p99/p100 in ms, from INFO latencystats."""
    return {name.removeprefix("latency_percentiles_usec_"): {p: v / 1000 for p, v in pcts.items()}
            for name, pcts in client.info("latencystats").items()}


def fresh(client: redis.Redis) -> None:
    client.flushdb()
    client.bgrewriteaof()
    while client.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.05)
    client.config_resetstat()


def run(client: redis.Redis, port: int, write, lists: Lists, batch: int) -> dict[str, float]:
    fresh(client)
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(port, stop, results))
    prober.start()
    time.sleep(0.2)
    with publish.held_lock(client, "als") as lock:
        began = time.perf_counter()
        write(client, lock, lists, batch)
        seconds = time.perf_counter() - began
    stop.set()
    waits = results.get()
    prober.join()
    stats = latencies(client)
    exec_ms = stats.get("exec", {})
    return {"seconds": seconds, "exec_p50": exec_ms.get("p50", np.nan),
            "exec_p99": exec_ms.get("p99", np.nan),
            "longest": max(pcts["p100"] for name, pcts in stats.items() if name != "get"),
            "probe_p99": float(np.percentile(waits, 99)), "probe_max": max(waits)}


def measure(port: int, count: int, turns: int, batch: int) -> dict[str, list[dict]]:
    client = redis.Redis(port=port)
    client.config_set("auto-aof-rewrite-percentage", 0)
    client.config_set("latency-tracking-info-percentiles", "50 99 100")
    values = make_lists(count)
    sides = {f"unfenced pipeline of {batch:,} (before)": unfenced,
             f"fenced, {5000:,} per EXEC": fenced(5000),
             f"fenced, {1000:,} per EXEC": fenced(1000),
             f"fenced, {publish.FENCE_BATCH:,} per EXEC (FENCE_BATCH)":
                 fenced(publish.FENCE_BATCH)}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for turn in range(turns + 1):  # turn 0 warms up and is not counted
        order = list(sides.items()) if turn % 2 else list(reversed(sides.items()))
        for side, write in order:
            version = f"bench{turn}"
            lists = [(keys.user_cf(f"u{n}", version), value) for n, value in enumerate(values)]
            result = run(client, port, write, lists, batch)
            if turn:
                results[side].append(result)
            print(f"turn {turn} {side}: {result['seconds']:.2f} s", file=sys.stderr)
    return results


def rows(results: dict[str, list[dict]]) -> Iterator[str]:
    """Medians over the turns; the longest over them too, in brackets."""
    for side, runs in results.items():
        def med(name: str, runs: list[dict] = runs) -> float:
            return float(np.median([r[name] for r in runs]))

        def top(name: str, runs: list[dict] = runs) -> str:
            return f"{med(name):.1f} ({max(r[name] for r in runs):.1f})"

        execs = ("-", "-") if np.isnan(med("exec_p50")) else (
            f"{med('exec_p50'):.1f}", f"{med('exec_p99'):.1f}")
        yield (f"| {side} | {med('seconds'):.2f} | {execs[0]} | {execs[1]} | {top('longest')} | "
               f"{med('probe_p99'):.1f} | {top('probe_max')} |")


def report(results: dict[str, list[dict]], count: int, turns: int, batch: int) -> str:
    header = ("| write | publish s | EXEC p50 ms | EXEC p99 ms | longest command ms | "
              "probe GET p99 ms | probe GET longest ms |")
    table = "\n".join([header, "|---|---:|---:|---:|---:|---:|---:|", *rows(results)])
    REPORT.write_text(
        f"# Fencing the publish's writes by its lock\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"`benchmarks/publish_fence_bench.py --lists {count} --turns {turns} --batch {batch}`: "
        f"{count:,} lists of ~1.6 KB, batches of {batch:,}, {turns} turns per write (after one "
        f"not counted); each cell the median over the turns, in brackets the longest. Publish "
        f"s: the writes alone, renewals included. EXEC and longest command (any command but "
        f"the probe's GET, EXEC counting as one): `INFO latencystats`. Probe: a GET every "
        f"millisecond from another process, round trip (includes the machine's scheduling: "
        f"publisher, Redis and probe share it). Load "
        f"average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n"
        f"{table}\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--batch", type=int, default=5000, help="lists per batch "
                        "(RECO_PUBLISH_BATCH's default)")
    args = parser.parse_args()
    server = start_redis()
    try:
        results = measure(server.port, args.lists, args.turns, args.batch)
    finally:
        remove(server)
    print(report(results, args.lists, args.turns, args.batch))


if __name__ == "__main__":
    main()
