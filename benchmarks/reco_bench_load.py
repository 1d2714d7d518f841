"""Load generators of the recommendation benchmark: wrk (closed loop, max throughput) and an
open-loop asyncio client (fixed rates, latency from each request's scheduled time)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import NamedTuple

import http_load
import httpx


def wrk(url: str, script: str, seconds: float, connections: int = 16) -> dict:
    """Closed-loop max throughput with wrk; the Lua script picks the path per request."""
    return http_load.wrk(url, script, seconds, connections)


SEQUENTIAL_USERS = """
counter = %d
request = function()
  counter = counter + 1
  return wrk.format("GET", "/recommendations?user_id=u" .. counter .. "&k=20")
end
"""
RANDOM_USERS = """
math.randomseed(7)
request = function()
  return wrk.format("GET", "/recommendations?user_id=u" .. math.random(0, %d) .. "&k=20")
end
"""
BARE = 'request = function() return wrk.format("GET", "/bare") end\n'


class OpenLoopRun(NamedTuple):
    latencies: list[float]  # ms, each from the request's scheduled send time
    duration_s: float  # from the first scheduled send to the last answer


async def open_loop(port: int, actions, rate: float, seconds: float) -> OpenLoopRun:
    """Fixed-rate (open-loop) load: latency counts from each request's scheduled time, so a
    slow server cannot hide its queueing. `actions` yields paths, or callables (events);
    its `answered(path)`, if it has one, hears of each answer."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    failures = 0
    answered = getattr(actions, "answered", None)

    async def one(path: str, scheduled: float) -> None:
        nonlocal failures
        for attempt in (1, 2):
            reused = bool(idle)
            conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                await reader.readexactly(length)
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()  # a kept-alive connection the server closed: retry once, fresh
                if attempt == 2 or not reused:
                    raise
        latencies.append((loop.time() - scheduled) * 1000)
        if answered is not None:
            answered(path)
        failures += not head.startswith(b"HTTP/1.1 200")
        idle.append(conn)

    tasks = []
    start = loop.time() + 0.05
    for n in range(int(rate * seconds)):
        scheduled = start + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        action = next(actions)
        if callable(action):
            action()
        else:
            tasks.append(asyncio.create_task(one(action, scheduled)))
    await asyncio.gather(*tasks)
    duration = loop.time() - start  # a server falling behind stretches it past `seconds`
    for _, writer in idle:
        writer.close()
    if failures:
        raise RuntimeError(f"{failures} non-200 responses")
    return OpenLoopRun(latencies, duration)


def progress(phase: str, value: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {phase}: {value}", file=sys.stderr, flush=True)


def counters(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    out = {}
    for name in ("recommendation_cache_hits_total", "recommendation_cache_misses_total"):
        out[name] = float(re.search(rf"^{name} ([\d.e+]+)$", text, re.M).group(1))
    return out


def delta(before: dict, after: dict) -> dict:
    return {"hits": after["recommendation_cache_hits_total"]
            - before["recommendation_cache_hits_total"],
            "misses": after["recommendation_cache_misses_total"]
            - before["recommendation_cache_misses_total"]}
