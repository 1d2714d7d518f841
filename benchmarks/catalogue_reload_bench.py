"""What the recommendation API's full catalogue reload costs as the keyspace grows.

    .venv/bin/python benchmarks/catalogue_reload_bench.py [--items 100000] [--repeats 3]

A full reload (`CatalogueSync.load_catalog`, every `catalog_reload_s` in a thread of each API
replica) reads the item ids from `item:ids`, once the full mirror marked it complete, and their
metadata hashes. Releases before that set found the hashes by a SCAN of the whole keyspace, as
reloads still do while the set is not marked; its cost grows with every other key (each user's
recent list, times, seen set, cache entries, co-view sets...). Measured here, on a catalogue of
`--items` items beside 0 and 1,000,000 other keys, the reload both ways, alternated.
Starts its own Redis (no persistence). Writes benchmarks/reports/catalogue_reload.md and
prints its table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reco_bench import start_redis  # noqa: E402

from reco import keys  # noqa: E402
from reco.settings import Settings  # noqa: E402
from serving.catalogue_sync import CatalogueSync  # noqa: E402
from tests.servers import remove  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "catalogue_reload.md"
OTHER_KEYS = (0, 1_000_000)
BATCH = 10_000


def fill_items(r: redis.Redis, items: int) -> None:
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for n in range(items):
        pipe.hset(keys.item_meta(f"i{n}"), mapping={
            "category": f"cat{n % 200}", "price": 10.0, "in_stock": "1", "created_at": now - n})
        pipe.sadd(keys.ITEM_IDS, f"i{n}")
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()


def fill_other(r: redis.Redis, count: int) -> None:
    """Users' keys, as many as `count` (lists of recent items: SCAN's cost is per key)."""
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        pipe.rpush(keys.user_recent(f"u{n}"), "i1", "i2")
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()


def timed_load(sync: CatalogueSync, expected: int) -> float:
    start = time.perf_counter()
    catalog = sync.load_catalog("bench")
    seconds = time.perf_counter() - start
    if len(catalog.ids) < expected:  # the id map may hold popular ids too: none here
        raise RuntimeError(f"loaded {len(catalog.ids)} of {expected} items")
    return seconds


def measure(items: int, repeats: int) -> list[dict]:
    server = start_redis()
    rows = []
    try:
        r = redis.Redis(port=server.port)
        settings = Settings(redis_url=f"redis://127.0.0.1:{server.port}/0")
        fill_items(r, items)
        have = 0
        for other in OTHER_KEYS:
            fill_other(r, other - have)
            have = other
            sync = CatalogueSync(settings)
            listed, scanned = [], []
            for _ in range(repeats):
                r.sadd(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE)  # as the full mirror leaves it
                listed.append(timed_load(sync, items))
                r.srem(keys.ITEM_IDS, keys.ITEM_IDS_COMPLETE)  # not known complete: SCAN
                scanned.append(timed_load(sync, items))
            sync.close()
            rows.append({"other": other, "keys": r.dbsize(), "now": float(np.median(listed)),
                         "upgrade": float(np.median(scanned))})
    finally:
        remove(server)
    return rows


def report(rows: list[dict], items: int, repeats: int) -> str:
    table = "\n".join(
        ["| other keys | keys in Redis | full reload, ids from `item:ids` (s) | "
         "full reload, ids by a SCAN of the keyspace (s) |",
         "|---:|---:|---:|---:|"]
        + [f"| {r['other']:,} | {r['keys']:,} | {r['now']:.2f} | {r['upgrade']:.2f} |"
           for r in rows])
    REPORT.write_text(
        f"# The catalogue's full reload\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"`benchmarks/catalogue_reload_bench.py`: {items:,} catalogue items; median of "
        f"{repeats} reloads each (`CatalogueSync.load_catalog`). Load average at the end: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n{table}\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(report(measure(args.items, args.repeats), args.items, args.repeats))


if __name__ == "__main__":
    main()
