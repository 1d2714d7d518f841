"""Fixed-window rate limits counted in Redis, so every replica of a service shares one budget.

One small Lua script per request, on one key (`reco.keys.rate_limit`): INCR, set the window's
expiry on the first hit, and return the count and the time left. The window lives in Redis (not
in each replica's clock), so replicas agree on it. A store error lets the request through
(fail open) and skips the limiter for a moment: rate limiting must not turn a Redis outage into
an outage of ingest, and the recommendation API has its own fallback for that case.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aredis
from redis.exceptions import RedisError

from reco import keys
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import RedisDown

log = logging.getLogger(__name__)

# KEYS[1] = counter, ARGV[1] = window in ms -> {count, ms left in the window}
HIT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
SKIP_AFTER_ERROR_S = 1.0
TIMEOUT_S = 0.25
# How each scope's subjects read in a 429's detail.
SCOPE_NAMES = {"ip": "client IP", "user": "user", "ip_user": "user and client IP",
               "auth_ip": "client IP"}
BLOCKED_MAX = 10_000  # subjects a FailureLimiter remembers as blocked


class RateLimited(Exception):
    """HTTP 429 with Retry-After."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass
class RateLimiter:
    """`per_s` requests per second per subject of `scope` (a key of SCOPE_NAMES), counted apart
    for each `service` ("ingest", "reco"): each service compares its own count with its own
    limit. `what` names what is counted in the 429's detail."""

    service: str
    scope: str
    per_s: float
    window_s: float = 1.0
    what: str = "requests"

    def __post_init__(self) -> None:
        # Rounded first: 0.29 * 100 is 28.999999999999996 in binary floating point.
        self.limit = max(1, math.floor(round(self.per_s * self.window_s, 9)))
        self.window_ms = max(1, round(self.window_s * 1000))
        self._skip_until = 0.0

    def _key(self, subject: str) -> str:
        return keys.rate_limit(self.service, self.scope, subject)

    def _decide(self, reply: list) -> None:
        count, ttl_ms = int(reply[0]), int(reply[1])
        if count > self.limit:
            raise RateLimited(
                self._detail(), max(1, math.ceil(ttl_ms / 1000)))

    def _detail(self) -> str:
        return (f"rate limit exceeded: {self.limit} {self.what} per {self.window_s:g}s per "
                f"{SCOPE_NAMES.get(self.scope, self.scope)}")

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self, exc: Exception) -> None:
        self._skip_until = time.monotonic() + SKIP_AFTER_ERROR_S
        log.warning("rate limiter store unavailable, not limiting for %.0fs: %s",
                    SKIP_AFTER_ERROR_S, type(exc).__name__)

    async def hit(self, client: AsyncPipelineClient, subject: str) -> None:
        """Count one request (pipelined client of the recommendation API); raises RateLimited."""
        if self._skipping():
            return
        try:
            reply = (await client.execute([("EVAL", HIT, 1, self._key(subject),
                                             self.window_ms)]))[0]
        except RedisDown as exc:
            self._failed(exc)
            return
        self._decide(reply)

    async def hit_async(self, client: aredis.Redis, subject: str) -> None:
        """Count one request (asyncio client of the ingest API); raises RateLimited."""
        if self._skipping():
            return
        try:
            async with asyncio.timeout(TIMEOUT_S):
                reply = await client.eval(HIT, 1, self._key(subject), self.window_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return
        self._decide(reply)


@dataclass
class FailureLimiter(RateLimiter):
    """Counts failures only (`hit*` after one), so what succeeds costs no store round trip. A
    subject over the limit is refused in process (`check`, no I/O) until its window ends,
    whatever it sends: were its valid attempts let through, a 429 or not would still tell a
    guess right from wrong. Other replicas block it at its next failure (the count is shared)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._blocked: dict[str, float] = {}  # subject -> monotonic end of its block

    def check(self, subject: str) -> None:
        """Raise RateLimited if `subject` went over the limit in a window not yet over."""
        until = self._blocked.get(subject)
        if until is None:
            return
        left = until - time.monotonic()
        if left > 0:
            raise RateLimited(self._detail(), max(1, math.ceil(left)))
        del self._blocked[subject]

    def _block(self, subject: str, exc: RateLimited) -> None:
        if len(self._blocked) >= BLOCKED_MAX:  # bounded: the store still holds every count
            self._blocked.clear()
        self._blocked[subject] = time.monotonic() + exc.retry_after_s

    async def hit(self, client: AsyncPipelineClient, subject: str) -> None:
        try:
            await super().hit(client, subject)
        except RateLimited as exc:
            self._block(subject, exc)
            raise

    async def hit_async(self, client: aredis.Redis, subject: str) -> None:
        try:
            await super().hit_async(client, subject)
        except RateLimited as exc:
            self._block(subject, exc)
            raise
