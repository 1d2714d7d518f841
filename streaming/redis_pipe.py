"""A minimal Redis pipeline for the processor's hot path: hiredis packs and parses replies.

redis-py's asyncio pipeline costs tens of microseconds of Python per command (an awaited reply
parse and a callback each); a processor batch sends thousands of commands, so that client
overhead, not Redis, capped throughput. Here a whole batch is one `pack_command` join, one
write, and replies are parsed in bulk by hiredis. Connection errors close the connection (its
state is unknown) and propagate; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

import hiredis
from redis.connection import parse_url

from reco.redis_tls import tls_context

Command = tuple[Any, ...]
READ_CHUNK = 1 << 16
_INCOMPLETE = object()  # what the parser returns while no whole reply is buffered (not False:
# iter() compares with ==, and an integer reply 0 == False)


def bulk(arg: str) -> str:
    """One RESP bulk string; its length counts UTF-8 bytes, as Redis reads it."""
    return f"${len(arg) if arg.isascii() else len(arg.encode())}\r\n{arg}\r\n"


def _bulks(args: Collection[str]) -> str:
    if "".join(args).isascii():  # one check in C instead of one per argument
        return "".join([f"${len(a)}\r\n{a}\r\n" for a in args])
    return "".join(map(bulk, args))


class Packed:
    """Commands encoded as RESP text as they are added: the bytes `hiredis.pack_command`
    sends, for a fraction of its cost (~0.3 us per argument there; packing was a fifth of the
    processor's CPU). Runs of one command shape are formatted in one comprehension."""

    __slots__ = ("_parts", "count")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.count = 0

    def add(self, *args: str | int) -> None:
        self._parts.append(f"*{len(args)}\r\n{_bulks([str(a) for a in args])}")
        self.count += 1

    def each(self, name: str, keys: list[str], *tail: str) -> None:
        """`name key *tail` for each of `keys`."""
        head, rest = f"*{2 + len(tail)}\r\n{bulk(name)}", _bulks(tail)
        if "".join(keys).isascii():
            self._parts.append("".join([f"{head}${len(k)}\r\n{k}\r\n{rest}" for k in keys]))
        else:
            self._parts.append("".join([f"{head}{bulk(k)}{rest}" for k in keys]))
        self.count += len(keys)

    def zincrby(self, key: str, increments: Mapping[str, float]) -> None:
        """ZINCRBY key repr(increment) member, per member."""
        head = f"*4\r\n$7\r\nZINCRBY\r\n{bulk(key)}"
        members, values = increments.keys(), map(repr, increments.values())  # repr is ASCII
        if "".join(members).isascii():
            text = "".join([f"{head}${len(x)}\r\n{x}\r\n${len(m)}\r\n{m}\r\n"
                            for m, x in zip(members, values, strict=True)])
        else:
            text = "".join([f"{head}{bulk(x)}{bulk(m)}"
                            for m, x in zip(members, values, strict=True)])
        self._parts.append(text)
        self.count += len(increments)

    def variadic(self, name: str, key: str, args: Sequence[str]) -> None:
        """`name key *args` (RPUSH, HSET, ZADD, ...)."""
        self._parts.append(f"*{2 + len(args)}\r\n{bulk(name)}{bulk(key)}{_bulks(args)}")
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def payload(self) -> bytes:
        return "".join(self._parts).encode()


_MULTI, _EXEC = hiredis.pack_command(("MULTI",)), hiredis.pack_command(("EXEC",))


class RedisReplyError(Exception):
    """Redis answered a command with an error (or aborted the transaction)."""


class TransactionAborted(RedisReplyError):
    """EXEC answered nil: a WATCHed key changed, nothing of the transaction was applied."""


class RedisPipe:
    def __init__(self, url: str, connect_timeout_s: float = 5.0, timeout_s: float = 30.0) -> None:
        params = parse_url(url)
        self.path: str | None = params.get("path")  # unix:// URLs
        self.host: str = params.get("host", "127.0.0.1")
        self.port: int = int(params.get("port", 6379))
        self.db: int = int(params.get("db", 0))
        self.username: str | None = params.get("username")
        self.password: str | None = params.get("password")
        self.tls = tls_context(params)
        self.connect_timeout_s = connect_timeout_s
        # A whole round trip, write and replies: a connection left half-open (a failover, a
        # partition) would otherwise hold the batch until the kernel gives up, ~15 minutes,
        # with the lag gauge frozen. The caller retries; a transaction applied before the
        # timeout is then recognised by its markers and applied positions.
        self.timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._watching = False  # inside `watching()`: the connection holds a WATCH

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Round trips from a WATCH to its EXEC or UNWATCH. A connection lost in between is
        an error, never replaced: a new one would not hold the WATCH, and EXEC would apply
        over a concurrent write."""
        self._watching = True
        try:
            yield
        finally:
            self._watching = False

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is not None and self._streams[0].at_eof():
            # Closed by the server while idle (a restart, CLIENT KILL, its idle timeout): the
            # processor's second pipe failed its next batch on it, one more backoff (6-30 s).
            await self.close()
            if self._watching:
                raise ConnectionError("Redis closed the connection that held the WATCH")
        if self._streams is None:
            opening = (asyncio.open_unix_connection(self.path) if self.path
                       else asyncio.open_connection(self.host, self.port, ssl=self.tls))
            self._streams = await asyncio.wait_for(opening, self.connect_timeout_s)
            setup: list[Command] = []
            if self.password:
                setup.append(("AUTH", *([self.username] if self.username else []), self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            if setup:
                await self._roundtrip(b"".join(map(hiredis.pack_command, setup)), len(setup))
        return self._streams

    async def execute(self, commands: Sequence[Command] | Packed,
                      transaction: bool = False, check: bool = True) -> list[Any]:
        """Send all commands in one write; with `transaction`, wrapped in MULTI/EXEC. Without
        `check` (and without `transaction`), error replies come back in place of their replies
        (`hiredis.ReplyError`) instead of raising RedisReplyError."""
        if not commands:
            return []
        payload = (commands.payload() if isinstance(commands, Packed)
                   else b"".join(map(hiredis.pack_command, commands)))
        if transaction:
            replies = await self._roundtrip(_MULTI + payload + _EXEC, len(commands) + 2)
            queued, result = replies[1:-1], replies[-1]
            raise_first_error(queued)
            if result is None:
                raise TransactionAborted("transaction aborted: a watched key changed")
            raise_first_error(result)
            return result
        replies = await self._roundtrip(payload, len(commands))
        if check:
            raise_first_error(replies)
        return replies

    async def _roundtrip(self, payload: bytes, count: int) -> list[Any]:
        reader, writer = await self._connection()
        try:
            async with asyncio.timeout(self.timeout_s):
                writer.write(payload)
                await writer.drain()
                parser = hiredis.Reader(notEnoughData=_INCOMPLETE)
                replies: list[Any] = []
                while len(replies) < count:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    parser.feed(data)
                    replies.extend(iter(parser.gets, _INCOMPLETE))  # the whole replies, in C
            return replies
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()


def raise_first_error(replies: Sequence[Any]) -> None:
    error = hiredis.ReplyError
    if error in map(type, replies):  # exact type, compared in C: a cheap scan of many
        raise RedisReplyError(str(next(r for r in replies if type(r) is error)))
