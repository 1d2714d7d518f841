"""What refreshing the category snapshot costs: time, and how long it holds the event loop.

    .venv/bin/python benchmarks/category_refresh_bench.py [--refreshes 10]

Requests filtered by a category make the background refresh (`GlobalSignals.refresh_async`,
every `popular_snapshot_refresh_s`) also read the top `popular_category_snapshot_n` items of
each of the latest `popular_category_snapshot_max` categories asked for
(`PopularReads.read_categories`), after the global top, both in slices of about `CHUNK`
members (a round trip each, parsed and mapped to rows on the event loop), then merged into the
snapshot (`PopularReads.index`, on the loop too). Here on a realistic shop: 100,000 items in 200
categories of Zipf-like sizes, every item with a Zipf-like popularity, the global top 20,000
read, and 0, 16 or 64 (the default maximum) of the largest categories asked for, plus 200
with the maximum raised to 200. A task that yields at every loop turn measures the longest
time the refresh kept the loop (and, on the loop's thread, the GIL) from anything else.
Starts its own Redis (no persistence). Writes benchmarks/reports/category_refresh.md and
prints its table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reco_bench import start_redis  # noqa: E402

from reco import keys  # noqa: E402
from reco.settings import Settings  # noqa: E402
from serving import popularity_snapshot  # noqa: E402
from serving.reco_snapshots import GlobalSignals  # noqa: E402
from tests.servers import remove  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "category_refresh.md"
ITEMS, CATEGORIES, POPULAR = 100_000, 200, 20_000
SIDES = [(0, 64), (16, 64), (64, 64), (200, 200)]  # (categories asked, snapshot maximum)


def fill(r: redis.Redis, rng: np.random.Generator) -> list[str]:
    """Catalogue, global and per-category popularity as the processor writes them; returns
    the categories, largest first."""
    sizes = 1.0 / np.arange(1, CATEGORIES + 1)
    category = rng.choice(CATEGORIES, size=ITEMS, p=sizes / sizes.sum())
    score = 1000.0 / rng.permutation(np.arange(1, ITEMS + 1)) ** 0.9
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for n in range(ITEMS):
        pipe.hset(keys.item_meta(f"i{n}"), mapping={
            "category": f"cat{category[n]}", "price": 10.0, "in_stock": "1",
            "created_at": now - n})
        pipe.sadd(keys.ITEM_IDS, f"i{n}")
        pipe.zadd(keys.ITEM_POPULARITY, {f"i{n}": float(score[n])})
        pipe.zadd(keys.category_popularity(f"cat{category[n]}"), {f"i{n}": float(score[n])})
        if len(pipe) >= 6000:
            pipe.execute()
    pipe.set(keys.ITEM_META_VERSION, 1)
    pipe.execute()
    return [f"cat{c}" for c in range(CATEGORIES)]


class LoopWatch:
    """A task that yields at every loop turn: each gap between its turns is a stretch in which
    other work held the loop."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []  # (end, length) of gaps over 50 us
        self.running = True

    async def run(self) -> None:
        last = time.perf_counter()
        while self.running:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if now - last > 50e-6:
                self.gaps.append((now, now - last))
            last = now

    def longest(self, start: float, end: float) -> float:
        """The longest gap that overlapped [start, end]."""
        return max((g for at, g in self.gaps if at >= start and at - g <= end), default=0.0)


class StepTimes:
    """Wall time of the category read and of the merge, and the category read's on-loop part
    (parsing and mapping its replies: from each reply to the next read or the end, summed over
    its round trips), from wrappers around `PopularReads`' methods."""

    def __init__(self) -> None:
        self.read = self.on_loop = self.merge = 0.0
        self.replied: float | None = None

    def install(self) -> None:
        reads = popularity_snapshot.PopularReads
        original_read, original_index = reads.read_categories, reads.index

        async def read_categories(this: Any, aio: Any, *args: Any) -> None:
            execute = aio.execute
            on_loop = 0.0

            def mapped() -> float:  # on the loop since the last reply came back
                return 0.0 if self.replied is None else time.perf_counter() - self.replied

            async def timed(cmds: list[tuple]) -> list:
                nonlocal on_loop
                on_loop += mapped()
                out = await execute(cmds)
                self.replied = time.perf_counter()
                return out

            aio.execute = timed
            self.replied = None
            started = time.perf_counter()
            try:
                await original_read(this, aio, *args)
            finally:
                aio.execute = execute
            on_loop += mapped()
            self.read, self.on_loop = time.perf_counter() - started, on_loop

        def index(this: Any) -> Any:
            started = time.perf_counter()
            out = original_index(this)
            self.merge = time.perf_counter() - started
            return out

        reads.read_categories, reads.index = read_categories, index


async def measure_side(signals: GlobalSignals, steps: StepTimes, refreshes: int
                       ) -> dict[str, list[float]]:
    watch = LoopWatch()
    ticker = asyncio.get_running_loop().create_task(watch.run())
    out: dict[str, list[float]] = {k: [] for k in ("total", "read", "on_loop", "merge", "hold")}
    try:
        await signals.refresh_async()  # the categories asked for join: first read not timed
        for _ in range(refreshes):
            start = time.perf_counter()
            await signals.refresh_async()
            end = time.perf_counter()
            await asyncio.sleep(0.05)  # the watch records the refresh's last hold at its turn
            for key, value in (("total", end - start), ("read", steps.read),
                               ("on_loop", steps.on_loop), ("merge", steps.merge),
                               ("hold", watch.longest(start, end))):
                out[key].append(value * 1e3)
    finally:
        watch.running = False
        await ticker
    return out


def measure(refreshes: int) -> list[dict]:
    server = start_redis()
    try:
        r = redis.Redis(port=server.port)
        categories = fill(r, np.random.default_rng(0))
        base = Settings(redis_url=f"redis://127.0.0.1:{server.port}/0",
                        popular_snapshot_size=POPULAR)
        steps = StepTimes()
        steps.install()
        rows = []
        for asked, maximum in SIDES:
            settings = base.model_copy(update={"popular_category_snapshot_max": maximum})
            signals = GlobalSignals(settings)
            signals.refresh()  # the catalogue load (blocking, as at start)
            for category in categories[:asked]:
                signals.ask_category(category)
            got = asyncio.run(measure_side(signals, steps, refreshes))
            members = sum(min(settings.popular_category_snapshot_n,
                              r.zcard(keys.category_popularity(c))) for c in categories[:asked])
            signals.stop()
            rows.append({"asked": asked, "members": members,
                         "n": settings.popular_category_snapshot_n, **{
                k: (float(np.median(v)), float(np.max(v))) for k, v in got.items()}})
    finally:
        remove(server)
    return rows


def report(rows: list[dict], refreshes: int) -> str:
    def cell(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.1f} ({pair[1]:.1f})"

    table = "\n".join(
        ["| categories asked | category members read | refresh ms | category read ms | "
         "its parse + map on the loop ms | merge into the snapshot ms | longest loop hold ms |",
         "|---:|---:|---:|---:|---:|---:|---:|"]
        + [f"| {r['asked']} | {r['members']:,} | {cell(r['total'])} | {cell(r['read'])} | "
           f"{cell(r['on_loop'])} | {cell(r['merge'])} | {cell(r['hold'])} |" for r in rows])
    REPORT.write_text(
        f"# Refreshing the category snapshot\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"`benchmarks/category_refresh_bench.py`: {ITEMS:,} items in {CATEGORIES} categories, "
        f"the global top {POPULAR:,} read in slices of {popularity_snapshot.CHUNK}, the "
        f"largest categories asked for ({rows[0]['n']} items each); "
        f"median (max) of {refreshes} on-loop refreshes (`refresh_async`). The parse + map is "
        f"summed over the category slices (a round trip each); the longest hold is the "
        f"longest stretch anything in the refresh kept the loop. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n"
        f"{table}\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=10)
    args = parser.parse_args()
    print(report(measure(args.refreshes), args.refreshes))


if __name__ == "__main__":
    main()
