"""A minimal asyncio Redis client for the recommendation hot path: one connection, pipelined.

Concurrent requests write their command batches to the same connection without waiting for
each other and Redis answers in order, so replies are matched first in, first out. The event
loop keeps serving other requests while a batch is in flight; the blocking client
(serving/reco_redis.py) left the loop idle for every round trip, which capped a cache hit at
~45% of a bare endpoint's throughput (measured, benchmarks/reports/recommendations.md).

Same contract as `PipelineClient`: RESP2, hiredis packing and parsing, `RedisDown` on any
socket, protocol or server error and on a timeout. A timeout or a lost connection fails every
batch in flight (their replies can no longer be matched) and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence

import hiredis
from redis.connection import parse_url

from reco.redis_tls import tls_context
from serving.reco_redis import Command, RedisDown, check_replies, setup_commands


class _Batch:
    __slots__ = ("future", "left", "replies", "deadline")

    def __init__(self, future: asyncio.Future, left: int, deadline: float) -> None:
        self.future = future
        self.left = left
        self.replies: list = []
        self.deadline = deadline  # loop time by which its replies must have come


class _Connection(asyncio.Protocol):
    def __init__(self, encoding: str | None, timeout_s: float) -> None:
        self.reader = hiredis.Reader(encoding=encoding) if encoding else hiredis.Reader()
        self.waiting: collections.deque[_Batch] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.unsent: list[bytes] = []  # batches of this loop iteration, written together
        self.timeout_s = timeout_s
        # One timer per connection, at the oldest batch's deadline, instead of one per batch
        # (creating and cancelling a loop timer twice per cache miss): batches share one
        # timeout and are answered in order, so the oldest one always expires first.
        self.timer: asyncio.TimerHandle | None = None

    def queue(self, batch: _Batch) -> None:
        self.waiting.append(batch)
        if self.timer is None:
            self._arm(batch)

    def _arm(self, batch: _Batch) -> None:
        self.timer = asyncio.get_running_loop().call_at(batch.deadline, self._expired, batch)

    def _expired(self, batch: _Batch) -> None:
        """`batch`'s deadline: fail everything if it is still waiting, else wait for the
        oldest batch still in flight."""
        self.timer = None
        if self.closed or not self.waiting:
            return
        if self.waiting[0] is batch:
            self.fail(RedisDown(f"timed out after {self.timeout_s}s"))
        else:
            self._arm(self.waiting[0])

    def write(self, data: bytes) -> None:
        """Queue a batch; the batches of all requests handled in one loop iteration go out in
        one socket write (a send syscall per batch was ~6% of a cache miss's CPU time)."""
        if not self.unsent:
            asyncio.get_running_loop().call_soon(self.flush)
        self.unsent.append(data)

    def flush(self) -> None:
        data, self.unsent = b"".join(self.unsent), []
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self.reader.gets()) is not False:
                if not waiting:
                    raise hiredis.ProtocolError("reply without a request")
                batch = waiting[0]
                batch.replies.append(reply)
                batch.left -= 1
                if batch.left == 0:
                    waiting.popleft()
                    if not batch.future.done():
                        batch.future.set_result(batch.replies)
        except hiredis.ProtocolError as exc:
            self.fail(RedisDown(f"protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisDown(str(exc) if exc else "connection closed by server"))

    def fail(self, exc: RedisDown) -> None:
        """Fail every batch in flight and close: later replies could not be matched."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(exc)
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # closing after its loop was closed
                self.transport.close()


class AsyncPipelineClient:
    def __init__(self, url: str, timeout_s: float, encoding: str | None = "utf-8") -> None:
        self.options = parse_url(url)
        self.tls = tls_context(self.options)
        self.timeout_s = timeout_s
        self.encoding = encoding
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future | None = None

    async def execute(self, commands: Sequence[Command], tolerated: int = 0) -> list:
        """Send all commands in one write and return their replies in order; error replies to
        the first `tolerated` commands are returned, not raised."""
        if not commands:
            return []
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return check_replies(await self.send(conn, commands), tolerated)

    def send(self, conn: _Connection, commands: Sequence[Command]) -> asyncio.Future:
        # Packed first: a command that cannot be packed must not leave a batch queued that
        # would take the replies of the batches after it.
        data = b"".join([hiredis.pack_command(tuple(c)) for c in commands])
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), len(commands), loop.time() + self.timeout_s)
        conn.queue(batch)  # replies come back in the order batches are queued
        conn.write(data)
        return batch.future

    async def _connection(self) -> _Connection:
        # Concurrent callers share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        opts = self.options
        conn = _Connection(self.encoding, self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                if "path" in opts:
                    await loop.create_unix_connection(lambda: conn, opts["path"])
                else:
                    await loop.create_connection(lambda: conn, opts.get("host", "127.0.0.1"),
                                                 opts.get("port", 6379), ssl=self.tls)
                setup = setup_commands(opts)
                if setup:
                    check_replies(await self.send(conn, setup))
        except (OSError, TimeoutError, RedisDown) as exc:
            down = exc if isinstance(exc, RedisDown) else RedisDown(
                str(exc) or type(exc).__name__)
            conn.fail(down)
            raise down from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.fail(RedisDown("client closed"))
            self._conn = None
