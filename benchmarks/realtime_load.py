"""Load generators of the real-time benchmark: wrk (closed loop), an open loop, httpx batches."""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import http_load
import httpx
import uvloop
from http_load import pct

MAX_CONNECTIONS = 256
CONTENT_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")


def wrk(url: str, body: bytes, seconds: float, connections: int = 64) -> dict:
    """Closed-loop max throughput with wrk (1 thread), POSTing `body`."""
    return http_load.wrk(url, http_load.post_script(body), seconds, connections)


def open_loop(port: int, path: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """Fixed-rate POSTs from a child process; latency counts from each request's scheduled
    time (no coordinated omission). Request i sends bodies[i % len(bodies)]. Returns
    percentiles, failures (not 202) and, by body, the scheduled and answered wall times."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        out = child.submit(_open_loop_child, port, path, bodies, rate, seconds).result()
    start, latency_ms = out["start_unix"], out["latency_ms"]
    # By body: the scheduled send time and the time of the 202, of each accepted request.
    sent = {bodies[i % len(bodies)]: (start + i / rate, start + i / rate + latency_ms[i] / 1000)
            for i, status in enumerate(out["status"]) if status == 202}
    return {**pct(latency_ms), "failed": sum(s != 202 for s in out["status"]), "sent": sent}


def _open_loop_child(port: int, path: str, bodies: list[bytes], rate: float,
                     seconds: float) -> dict:
    async def main() -> dict:
        sender = _Sender(asyncio.get_running_loop(), port, path, bodies, rate, seconds)
        return await sender.run()

    return uvloop.run(main())


class _Sender:
    """Plain callbacks on uvloop, no task or stream per request: at 1,000-2,000 requests/s
    the generator shares the servers' two cores, and the asyncio-streams version it replaces
    took ~2x the CPU. A tick every <= 1 ms sends what is due (up to ~1 ms late, which counts)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, path: str,
                 bodies: list[bytes], rate: float, seconds: float) -> None:
        self.loop, self.port, self.rate = loop, port, rate
        self.requests = [b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(b), b)
                         for b in bodies]
        self.n = int(rate * seconds)
        self.status = [0] * self.n
        self.latency_ms = [0.0] * self.n
        self.idle: list[_Connection] = []
        self.queue: deque[int] = deque()  # due, waiting for a connection
        self.opened = self.next = self.finished = 0
        self.all_done = loop.create_future()
        self.t0 = 0.0

    async def run(self) -> dict:
        self.t0 = time.perf_counter() + 0.05
        start_unix = time.time() + 0.05
        self.loop.call_later(0.05, self._tick)
        await self.all_done
        for conn in self.idle:
            conn.transport.close()
        return {"start_unix": start_unix, "status": self.status, "latency_ms": self.latency_ms}

    def due(self, job: int) -> float:
        return self.t0 + job / self.rate

    def _tick(self) -> None:
        now = time.perf_counter()
        while self.next < self.n and self.due(self.next) <= now:
            self._dispatch(self.next)
            self.next += 1
        if self.next < self.n:
            self.loop.call_later(max(self.due(self.next) - now, 0.001), self._tick)

    def _dispatch(self, job: int) -> None:
        if self.idle:
            self.idle.pop().send(job)
            return
        self.queue.append(job)  # beyond MAX_CONNECTIONS requests queue here (and that counts)
        if self.opened < MAX_CONNECTIONS:
            self.opened += 1
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Connection(self), "127.0.0.1", self.port)
        except OSError:
            self.opened -= 1
            if self.queue:
                self.done(None, self.queue.popleft(), 0)  # refused: that request is lost

    def ready(self, conn: _Connection) -> None:
        if self.queue:
            conn.send(self.queue.popleft())
        else:
            self.idle.append(conn)

    def done(self, conn: _Connection | None, job: int, status: int) -> None:
        self.status[job] = status
        self.latency_ms[job] = (time.perf_counter() - self.due(job)) * 1000
        self.finished += 1
        if conn is None:
            self.opened -= 1
        else:
            self.ready(conn)
        if self.finished == self.n:
            self.all_done.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport
        self.buffer = b""
        self.job: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sender.ready(self)

    def send(self, job: int) -> None:
        self.job = job
        self.transport.write(self.sender.requests[job % len(self.sender.requests)])

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        head_end = buffer.find(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(buffer, 0, head_end) if head_end >= 0 else None
        if length is None or len(buffer) < head_end + 4 + int(length.group(1)):
            self.buffer = buffer  # the answer is not complete yet
            return
        self.buffer = buffer[head_end + 4 + int(length.group(1)):]
        job, self.job = self.job, None
        if job is not None:
            self.sender.done(self, job, int(buffer[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.job is not None:
            self.sender.done(None, self.job, 0)  # reset while waiting: that request is lost
        elif self in self.sender.idle:
            self.sender.idle.remove(self)
            self.sender.opened -= 1


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


