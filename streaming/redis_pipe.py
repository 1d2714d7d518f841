"""A minimal Redis pipeline for the processor's hot path: hiredis packs and parses replies.

redis-py's asyncio pipeline costs tens of microseconds of Python per command (an awaited reply
parse and a callback each); a processor batch sends thousands of commands, so that client
overhead, not Redis, capped throughput. Here a whole batch is one `pack_command` join, one
write, and replies are parsed in bulk by hiredis. Connection errors close the connection (its
state is unknown) and propagate; the next call reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.connection import parse_url

Command = tuple[Any, ...]
READ_CHUNK = 1 << 16
_INCOMPLETE = object()  # what the parser returns while no whole reply is buffered (not False:
# iter() compares with ==, and an integer reply 0 == False)


class RedisReplyError(Exception):
    """Redis answered a command with an error (or aborted the transaction)."""


class RedisPipe:
    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        params = parse_url(url)
        self.host: str = params.get("host", "127.0.0.1")
        self.port: int = int(params.get("port", 6379))
        self.db: int = int(params.get("db", 0))
        self.username: str | None = params.get("username")
        self.password: str | None = params.get("password")
        self.connect_timeout_s = connect_timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout_s)
            setup: list[Command] = []
            if self.password:
                setup.append(("AUTH", *([self.username] if self.username else []), self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            if setup:
                await self._roundtrip(setup)
        return self._streams

    async def execute(self, commands: Sequence[Command], transaction: bool = False) -> list[Any]:
        """Send all commands in one write; with `transaction`, wrapped in MULTI/EXEC."""
        if not commands:
            return []
        if transaction:
            replies = await self._roundtrip([("MULTI",), *commands, ("EXEC",)])
            queued, result = replies[1:-1], replies[-1]
            _raise_first_error(queued)
            if result is None:
                raise RedisReplyError("transaction aborted")
            _raise_first_error(result)
            return result
        replies = await self._roundtrip(commands)
        _raise_first_error(replies)
        return replies

    async def _roundtrip(self, commands: Sequence[Command]) -> list[Any]:
        reader, writer = await self._connection()
        try:
            writer.write(b"".join(map(hiredis.pack_command, commands)))
            await writer.drain()
            parser = hiredis.Reader(notEnoughData=_INCOMPLETE)
            replies: list[Any] = []
            while len(replies) < len(commands):
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


def _raise_first_error(replies: Sequence[Any]) -> None:
    error = hiredis.ReplyError
    if error in map(type, replies):  # exact type, compared in C: a cheap scan of many
        raise RedisReplyError(str(next(r for r in replies if type(r) is error)))
