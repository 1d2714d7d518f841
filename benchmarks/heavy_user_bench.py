"""What a user with a long history costs on a cache miss: CPU per miss, in process.

    .venv/bin/python benchmarks/heavy_user_bench.py [--seen 5000] [--turns 10]

A miss reads the user's seen items (`exclude_seen`) and maps each id to a catalogue row, so its
cost grows with what the read returns. On the recommendation benchmark's data (100,000 items
and users, benchmarks/reco_bench_data.py), a few hundred users get `--seen` more items touched
before their recent ones, like a crawler reusing one user id. The same misses are then served
with the read bounded at RECO_SEEN_MAX's default and at the whole history (what an unbounded
read costs), and for typical users (~100 seen items) as a reference, taking turns so that the
machine's noise falls on every side alike (`RecoService.recommend` without HTTP, 2 MB written
between misses so the caches are as cold as in the server). Writes
benchmarks/reports/heavy_users.md and prints its table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reco_bench import start_redis  # noqa: E402
from reco_bench_data import Sizes, fill  # noqa: E402

from reco import keys, scoring  # noqa: E402
from reco.settings import Settings  # noqa: E402
from serving.reco_service import RecoParams, RecoService  # noqa: E402
from serving.reco_snapshots import GlobalSignals  # noqa: E402
from serving.reco_store import FeatureStore  # noqa: E402
from tests.servers import remove  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "heavy_users.md"
TURN = 40  # misses per side and turn


def give_history(r: redis.Redis, users: list[str], extra: int, items: int, seed: int) -> None:
    """`extra` more seen items per user, all touched before the user's existing ones (which
    keep their times)."""
    rng = np.random.default_rng(seed)
    oldest_ms = int(time.time() * 1000) - 31 * 86_400_000
    for user in users:
        ids = rng.choice(items, extra, replace=False)
        r.zadd(keys.user_seen(user), {f"i{n}": oldest_ms - k for k, n in enumerate(ids)},
               nx=True)


def measure(seen: int, turns: int) -> list[dict]:
    sizes = Sizes(False)
    server = start_redis()
    try:
        r = redis.Redis(port=server.port)
        fill(r, sizes, np.random.default_rng(0))
        heavy = [f"u{n}" for n in range(10_000, 10_000 + turns * TURN)]
        typical = [f"u{n}" for n in range(20_000, 20_000 + turns * TURN)]
        give_history(r, heavy, seen, sizes.items, seed=1)
        base = Settings(redis_url=f"redis://127.0.0.1:{server.port}/0")
        signals = GlobalSignals(base)
        bounded = base.seen_max
        whole = sizes.recent + sizes.seen_before_recent + seen
        sides = [("heavy", bounded, heavy), ("heavy", whole, heavy), ("typical", bounded, typical)]
        services = []
        for _, seen_max, _ in sides:
            settings = base.model_copy(update={"seen_max": seen_max})
            services.append(RecoService(settings, FeatureStore.from_settings(settings), signals))
        scoring.warm_up()
        junk = np.ones(2**18)
        cpu_us: list[list[float]] = [[] for _ in sides]

        async def run() -> None:
            signals.start()
            while not signals.loaded:
                await asyncio.sleep(0.2)
            for side, service in enumerate(services):  # list caches filled as in a server
                for n in range(1000, 2000):  # (a k per side: no side answers from the cache)
                    await service.recommend(RecoParams(user_id=f"u{n}", k=7 + side))
            for turn in range(turns):
                order = range(len(sides)) if turn % 2 else reversed(range(len(sides)))
                for side in order:
                    cpu = 0.0
                    for user in sides[side][2][turn * TURN:(turn + 1) * TURN]:
                        junk[:] += 1.0
                        started = time.process_time()
                        # k of its own per side: never answered by another side's cache entry
                        await services[side].recommend(RecoParams(user_id=user, k=20 + side))
                        cpu += time.process_time() - started
                    cpu_us[side].append(cpu / TURN * 1e6)
            signals.stop()

        asyncio.run(run())
    finally:
        remove(server)
    return [{"users": who, "seen_items": sizes.recent + sizes.seen_before_recent
             + (seen if who == "heavy" else 0), "read_bound": seen_max,
             "median_us": float(np.median(cpu_us[side])),
             "quartiles_us": [float(q) for q in np.percentile(cpu_us[side], [25, 75])]}
            for side, (who, seen_max, _) in enumerate(sides)]


def report(rows: list[dict], turns: int) -> str:
    table = "\n".join(
        ["| users | items seen (about) | seen items read | CPU us per miss, median (quartiles) |",
         "|---|---:|---:|---|"]
        + [f"| {r['users']} | {r['seen_items']:,} | {r['read_bound']:,} | {r['median_us']:,.0f}"
           f" ({r['quartiles_us'][0]:,.0f} - {r['quartiles_us'][1]:,.0f}) |" for r in rows])
    REPORT.write_text(
        f"# Cache misses of users with a long history\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `benchmarks/heavy_user_bench.py`"
        f", {turns} turns of {TURN} misses per side, in process (no HTTP).\n\n{table}\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seen", type=int, default=5000,
                        help="items the heavy users touched before their usual history")
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    print(report(measure(args.seen, args.turns), args.turns))


if __name__ == "__main__":
    main()
