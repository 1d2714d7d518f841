"""A/B of two checkouts' cache-miss cost: CPU time per miss, in process, in interleaved rounds.

    git worktree add /tmp/before <rev>
    .venv/bin/python benchmarks/reco_ab.py /tmp/before [--after .] [--rounds 30]

On a shared machine, throughput runs of the whole server move by more than a change worth a
few percent (benchmarks/reco_bench.py's runs of one version differ by 10-20%). Here both
versions serve from the same Redis, each in its own process, taking turns of 200 misses
(`RecoService.recommend` without HTTP), so that whatever else the machine does falls on both
alike; each turn's CPU time per miss is paired with the other version's neighbouring turn.
Between misses 2 MB are written, as other requests would, so the caches are as cold as in the
server. Writes benchmarks/reports/reco_ab.md and prints its table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TURN = 200  # misses per turn
SECOND_SIDE = 50_000  # the "after" side asks other users with the same features (pools of 1,000)


def child(root: str, port: int) -> None:
    """One side: load `root`'s serving code, warm up, then serve a turn per 'go N' line."""
    sys.path.insert(0, root)  # ahead of the editable install: this checkout's packages
    from reco import scoring
    from reco.settings import Settings
    from serving.reco_service import RecoParams, RecoService
    from serving.reco_snapshots import GlobalSignals
    from serving.reco_store import FeatureStore

    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    store = FeatureStore(settings.redis_url, settings.reco_redis_timeout_s,
                         settings.reco_redis_retry_s, settings.reco_neighbours_n)
    signals = GlobalSignals(settings)
    service = RecoService(settings, store, signals)
    scoring.warm_up()
    junk = np.ones(2**18)

    async def serve() -> None:
        signals.start()
        while not signals.loaded:
            await asyncio.sleep(0.2)
        for n in range(1000, 3000):  # the in-process list caches fill as in a running server
            await service.recommend(RecoParams(user_id=f"u{n}", k=7))
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while (line := await loop.run_in_executor(None, sys.stdin.readline)).startswith("go"):
            first = int(line.split()[1])
            started = time.process_time()
            for n in range(first, first + TURN):
                await service.recommend(RecoParams(user_id=f"u{n}"))
                junk[:] += 1.0
            print(f"{(time.process_time() - started) / TURN * 1e6:.1f}", flush=True)
        signals.stop()

    asyncio.run(serve())


def run(before: str, after: str, rounds: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import redis
    from reco_bench import start_redis
    from reco_bench_data import Sizes, fill

    from tests.servers import remove

    server = start_redis()
    sides = {}
    try:
        fill(redis.Redis(port=server.port), Sizes(False), np.random.default_rng(42))
        for name, root in (("before", before), ("after", after)):
            sides[name] = subprocess.Popen(
                [sys.executable, __file__, "--child", root, str(server.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for side in sides.values():
            if side.stdout.readline().strip() != "ready":
                raise RuntimeError("a side did not start")
        us: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(rounds):
            first = 10_000 + r * TURN
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                side = sides[name]
                side.stdin.write(f"go {first + (SECOND_SIDE if name == 'after' else 0)}\n")
                side.stdin.flush()
                us[name].append(float(side.stdout.readline()))
    finally:
        for side in sides.values():
            side.kill()
        remove(server)
    b, a = np.array(us["before"]), np.array(us["after"])
    return {"before": _commit(before), "after": _commit(after), "rounds": rounds, "turn": TURN,
            "loadavg": os.getloadavg(), "before_us": b.tolist(), "after_us": a.tolist(),
            "median_before_us": float(np.median(b)), "median_after_us": float(np.median(a)),
            "median_paired_ratio": float(np.median(a / b)),
            "after_faster_in": int((a < b).sum())}


def _commit(root: str) -> str:
    """The checkout's commit, "-dirty" when it has uncommitted changes."""
    out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return out.stdout.strip() or root


def report(res: dict) -> str:
    q = np.percentile(np.array(res["after_us"]) / np.array(res["before_us"]), [25, 75])
    table = f"""| side | checkout | CPU us per miss (median of {res['rounds']} turns) |
|---|---|---:|
| before | `{res['before']}` | {res['median_before_us']:.0f} |
| after | `{res['after']}` | {res['median_after_us']:.0f} |

after / before, paired turns: median {res['median_paired_ratio']:.3f} (quartiles {q[0]:.3f} -
{q[1]:.3f}); after cheaper in {res['after_faster_in']} of {res['rounds']} pairs."""
    md = f"""# Recommendation API: A/B of a cache miss's CPU time

Generated by `benchmarks/reco_ab.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
(load average {res['loadavg'][0]:.1f}). Both checkouts serve misses in process (no HTTP) from
one Redis filled like `reco_bench.py`'s, taking turns of {res['turn']} misses.

{table}
"""
    out = ROOT / "benchmarks" / "reports" / "reco_ab.md"
    out.write_text(md)
    return table


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="checkout of the code to compare against")
    parser.add_argument("--after", default=str(ROOT), help="checkout to measure (this one)")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    res = run(str(Path(args.before).resolve()), str(Path(args.after).resolve()), args.rounds)
    print(report(res))


if __name__ == "__main__":
    main()
