"""Load generators of the real-time benchmark: wrk (closed loop) and an asyncio open loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
import time

import httpx
import numpy as np

MAX_CONNECTIONS = 256


def wrk(url: str, body: bytes, seconds: float, connections: int = 64) -> dict:
    """Closed-loop max throughput with wrk (1 thread), POSTing `body`."""
    script = (f"wrk.method = 'POST'\nwrk.body = {json.dumps(body.decode())}\n"
              "wrk.headers['Content-Type'] = 'application/json'\n")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                          "-s", f.name, url], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0}


async def open_loop(port: int, path: str, bodies, rate: float, seconds: float) -> dict:
    """Fixed-rate load; latency counts from each request's scheduled time (no coordinated
    omission). `bodies` yields request bodies; returns percentiles and send times by body."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    sent: dict[bytes, float] = {}
    failures = 0

    slots = asyncio.Semaphore(MAX_CONNECTIONS)  # beyond it requests queue (and that counts)

    async def one(body: bytes, scheduled: float, sent_at: float) -> None:
        nonlocal failures
        async with slots:
            try:
                conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conn
                writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (path.encode(), len(body), body))
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                failures += 1  # a refused or reset connection: the request is lost
                return
        latencies.append((loop.time() - scheduled) * 1000)
        if head.startswith(b"HTTP/1.1 202"):
            sent[body] = sent_at
        else:
            failures += 1  # e.g. 503 when the broker's ack took longer than the timeout
        idle.append(conn)

    tasks = []
    start = loop.time() + 0.05
    for n in range(int(rate * seconds)):
        scheduled = start + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next(bodies), scheduled, time.time())))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return {**pct(latencies), "failed": failures, "sent": sent}


def pct(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


async def closed_batches(port: int, make_body, connections: int, seconds: float) -> dict:
    """Batch endpoint throughput: `connections` clients posting 1,000-event batches back to back."""
    events = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal events
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while time.perf_counter() < deadline:
                body, n = make_body()
                t = time.perf_counter()
                r = await c.post("/events/batch", content=body,
                                 headers={"content-type": "application/json"})
                if r.status_code != 202:
                    raise RuntimeError(f"batch answered {r.status_code}: {r.text[:200]}")
                latencies.append((time.perf_counter() - t) * 1000)
                events += n

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return {"events_per_s": events / (time.perf_counter() - started), **pct(latencies)}


