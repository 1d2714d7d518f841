"""Redis-backed rate limits: 429 + Retry-After, one budget shared by every replica."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from reco import keys
from reco.settings import Settings
from reco.stack.health import free_port, tcp_open, wait_until
from serving import ingest, recommendations
from serving.rate_limit import RateLimited, RateLimiter
from serving.reco_aio import AsyncPipelineClient
from tests.realtime.conftest import end_offsets
from tests.reliability.conftest import process_env, start_process
from tests.security.conftest import API_KEY, bearer, make_token

pytestmark = pytest.mark.integration

# Three requests per minute: a window long enough that no test straddles two of them.
LIMITS = {"rate_limit_window_s": 60.0, "rate_limit_ingest_per_s": 0.05,
          "rate_limit_reco_per_s": 0.05}
# Three refused credentials per client IP a minute.
AUTH_FAILURES = {"rate_limit_auth_failures": 3, "rate_limit_auth_window_s": 60.0}
ATTACKER, OTHER = "203.0.113.66", "198.51.100.7"
FAILURES_DETAIL = {"detail": "rate limit exceeded: 3 failed authentication attempts per 60s per "
                             "client IP"}


def event(user: str) -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": "i1", "event_type": "view"}


def test_recommendations_limit_per_user_shared_by_replicas(
    settings: Settings, reco_client, redis_client: redis.Redis
) -> None:
    limited = settings.model_copy(update={**LIMITS, "popular_snapshot_refresh_s": 3600.0})
    with reco_client(limited) as one, reco_client(limited) as two:
        statuses = [c.get("/recommendations", params={"user_id": "u1"}).status_code
                    for c in (one, two, one, two)]
        assert statuses == [200, 200, 200, 429]
        refused = one.get("/recommendations", params={"user_id": "u1"})
        assert refused.status_code == 429
        assert refused.json() == {
            "detail": "rate limit exceeded: 3 requests per 60s per user and client IP"}
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Another user has a budget of their own.
        assert two.get("/recommendations", params={"user_id": "u2"}).status_code == 200
        # Routes without a user are limited per client IP.
        assert [one.get("/popular").status_code for _ in range(4)] == [200, 200, 200, 429]
    # The window expires by itself. Without auth, per user and client IP (the next test).
    assert redis_client.ttl(keys.rate_limit("reco", "ip_user", "testclient/u1")) > 0


@contextmanager
def reco_from(settings: Settings, ip: str) -> Iterator[TestClient]:
    """The recommendation app in process, every request coming from client address `ip`."""
    with TestClient(recommendations.create_app(settings), client=(ip, 50000)) as client:
        yield client


@asynccontextmanager
async def ingest_from(app: FastAPI, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the (started) ingest app whose requests come from client address `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


def test_without_auth_one_client_cannot_spend_another_clients_budget_for_a_user(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Without auth a user id is only a claim: counted per user alone, one client asking for
    u1 used up u1's budget for every other client too (a shop's backend among them)."""
    limited = settings.model_copy(update={**LIMITS, "popular_snapshot_refresh_s": 3600.0})
    u1 = {"user_id": "u1"}
    with reco_from(limited, ATTACKER) as attacker, reco_from(limited, OTHER) as shop:
        assert [attacker.get("/recommendations", params=u1).status_code
                for _ in range(4)] == [200, 200, 200, 429]
        # The shop still has u1's whole budget, and the limit per user still holds for it.
        assert [shop.get("/recommendations", params=u1).status_code
                for _ in range(4)] == [200, 200, 200, 429]
    assert sorted(redis_client.keys(keys.rate_limit("reco", "*", "*"))) == [
        keys.rate_limit("reco", "ip_user", f"{ip}/u1") for ip in sorted((OTHER, ATTACKER))]


def test_reco_refused_tokens_are_limited_per_client_ip(
    secure: Settings, redis_client: redis.Redis
) -> None:
    """A refused token was never limited (the token is checked before the limiter): anyone
    could guess at full speed. Past 3 refused tokens a minute the client IP gets 429 on every
    route, even with a valid token (else a 429 or not would still tell a guess right from
    wrong); other clients keep going, and valid requests are not counted."""
    settings = secure.model_copy(update={**AUTH_FAILURES, "popular_snapshot_refresh_s": 3600.0})
    forged, good = make_token("u1", key="another-secret-0123456789abcdef0123"), make_token("u1")
    u1 = {"user_id": "u1"}
    with reco_from(settings, ATTACKER) as attacker, reco_from(settings, OTHER) as other:
        # Sending no token is not a guess, nor is one signed with our key but expired (a
        # shop backend forwarding stale tokens); a valid one is not counted (no Redis command).
        assert [attacker.get("/recommendations", params=u1).status_code
                for _ in range(5)] == [401] * 5
        expired = bearer(make_token("u1", expires_in_s=-3600))
        assert [attacker.get("/recommendations", params=u1, headers=expired).status_code
                for _ in range(5)] == [401] * 5
        assert other.get("/recommendations", params=u1, headers=bearer(good)).status_code == 200
        assert redis_client.keys(keys.rate_limit("reco", "auth_ip", "*")) == []
        assert [attacker.get("/recommendations", params=u1, headers=bearer(forged)).status_code
                for _ in range(4)] == [401, 401, 401, 429]
        for route, params in (("/recommendations", u1), ("/popular", {})):
            refused = attacker.get(route, params=params, headers=bearer(good))
            assert (refused.status_code, refused.json()) == (429, FAILURES_DETAIL), route
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert other.get("/recommendations", params=u1, headers=bearer(good)).status_code == 200
        assert other.get("/popular", headers=bearer(forged)).status_code == 401  # its own count
        # Another replica shares the count: the attacker's next guess there is refused too.
        with reco_from(settings, ATTACKER) as replica:
            assert replica.get("/popular", headers=bearer(forged)).status_code == 429
    assert int(redis_client.get(keys.rate_limit("reco", "auth_ip", ATTACKER))) == 5
    assert int(redis_client.get(keys.rate_limit("reco", "auth_ip", OTHER))) == 1


async def test_ingest_refused_keys_are_limited_per_client_ip(
    secure: Settings, kafka_topics: dict, redis_client: redis.Redis
) -> None:
    """The same for API keys on the ingest writes, hot route (/events) and FastAPI route
    (/items) alike."""
    settings = secure.model_copy(update=AUTH_FAILURES)
    wrong, good = {"X-API-Key": "not-" + API_KEY}, {"X-API-Key": API_KEY}
    app = ingest.create_app(settings)
    async with app.router.lifespan_context(app), ingest_from(app, ATTACKER) as attacker, \
            ingest_from(app, OTHER) as other:
        assert [(await attacker.post("/events", json=event("u1"))).status_code
                for _ in range(5)] == [401] * 5  # no key: not a guess
        assert (await other.post("/events", json=event("u1"), headers=good)).status_code == 202
        assert redis_client.keys(keys.rate_limit("ingest", "auth_ip", "*")) == []
        assert [(await attacker.post("/events", json=event("u1"), headers=wrong)).status_code
                for _ in range(4)] == [401, 401, 401, 429]
        for method, path in (("POST", "/events"), ("PUT", "/items/i1")):
            refused = await attacker.request(method, path, json=event("u1"), headers=good)
            assert (refused.status_code, refused.json()) == (429, FAILURES_DETAIL), path
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert (await other.post("/events", json=event("u1"), headers=good)).status_code == 202
    assert int(redis_client.get(keys.rate_limit("ingest", "auth_ip", ATTACKER))) == 4
    assert await end_offsets(settings, settings.topic_events) == 2


def test_recommendations_auth_then_limit(settings: Settings, reco_client, redis_client) -> None:
    """401/403 are decided first and do not spend the user's budget."""
    secure = settings.model_copy(update={**LIMITS, "auth_enabled": True,
                                         "popular_snapshot_refresh_s": 3600.0})
    token = make_token("u1", key=secure.jwt_secret.get_secret_value())
    with reco_client(secure) as client:
        for _ in range(5):
            assert client.get("/recommendations", params={"user_id": "u1"}).status_code == 401
        assert client.get("/recommendations", params={"user_id": "u1"},
                          headers=bearer(make_token("u2", key=secure.jwt_secret
                                                    .get_secret_value()))).status_code == 403
        statuses = [client.get("/recommendations", params={"user_id": "u1"},
                               headers=bearer(token)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_ingest_limit_per_ip_shared_by_replicas(
    settings: Settings, ingest_client, kafka_topics: dict, redis_client: redis.Redis
) -> None:
    limited = settings.model_copy(update=LIMITS)
    async with ingest_client(limited) as one, ingest_client(limited) as two:
        statuses = [(await c.post("/events", json=event("u1"))).status_code
                    for c in (one, two, one, two, two)]
        refused = await one.post("/events/batch", json={"events": [event("u2")]})
        health = await two.get("/health")
    assert statuses == [202, 202, 202, 429, 429]
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json() == {"detail": "rate limit exceeded: 3 requests per 60s per client IP"}
    assert health.status_code == 200  # only writes are limited
    assert await end_offsets(limited, limited.topic_events) == 3  # refused ones never published


async def test_limiter_fails_open_when_redis_is_down(redis_url: str, redis_client: redis.Redis,
                                                     caplog) -> None:
    """A limit of 1: the store refuses the second hit; with the store unreachable the next
    hits go through (and the limiter says why), the following ones without asking it."""
    limiter = RateLimiter("reco", "user", per_s=1, window_s=1.0)
    alive = AsyncPipelineClient(redis_url, 1.0)
    dead = AsyncPipelineClient(f"redis://127.0.0.1:{free_port()}/0", 0.1)
    try:
        await limiter.hit(alive, "u1")
        with pytest.raises(RateLimited):
            await limiter.hit(alive, "u1")
        with caplog.at_level(logging.WARNING, logger="serving.rate_limit"):
            await limiter.hit(dead, "u1")
        assert "rate limiter store unavailable" in caplog.text
        await limiter.hit(alive, "u1")  # over the limit, but the store is skipped for a while
        # Not even counted:
        assert int(redis_client.get(keys.rate_limit("reco", "user", "u1"))) == 2
    finally:
        alive.close()
        dead.close()


async def test_limiter_counts_in_one_key(redis_url: str, redis_client: redis.Redis) -> None:
    limiter = RateLimiter("reco", "user", per_s=2, window_s=1.0)
    client = AsyncPipelineClient(redis_url, 1.0)
    await limiter.hit(client, "u1")
    await limiter.hit(client, "u1")
    with pytest.raises(RateLimited) as exc:
        await limiter.hit(client, "u1")
    assert exc.value.retry_after_s == 1
    assert redis_client.keys(keys.rate_limit("*", "*", "*")) == [
        keys.rate_limit("reco", "user", "u1")]
    assert int(redis_client.get(keys.rate_limit("reco", "user", "u1"))) == 3
    client.close()


async def test_services_count_one_client_apart(redis_url: str) -> None:
    """The ingest API and the recommendation API both limit per client IP: a shop backend on
    one IP posting events must not spend the budget of its recommendation requests."""
    ingest, reco = RateLimiter("ingest", "ip", per_s=1), RateLimiter("reco", "ip", per_s=1)
    client = AsyncPipelineClient(redis_url, 1.0)
    try:
        await ingest.hit(client, "10.0.0.1")
        with pytest.raises(RateLimited):
            await ingest.hit(client, "10.0.0.1")
        await reco.hit(client, "10.0.0.1")
    finally:
        client.close()


def test_a_limit_is_the_rate_times_the_window_rounded_down() -> None:
    assert RateLimiter("reco", "ip", per_s=0.29, window_s=100).limit == 29  # not 28
    assert RateLimiter("reco", "ip", per_s=2.5, window_s=1).limit == 2


@pytest.mark.parametrize(("trusted", "statuses", "counts"), [
    # The balancer is trusted: each client has a budget of its own.
    ("127.0.0.1", [202, 202, 202, 429, 202], {"203.0.113.1": 4, "203.0.113.2": 1}),
    # Only another proxy is: X-Forwarded-For is not believed, the balancer is the client.
    ("10.9.9.9", [202, 202, 202, 429, 429], {"127.0.0.1": 5}),
])
def test_ingest_limits_the_client_behind_a_trusted_proxy(
    settings: Settings, kafka_topics: dict, redis_client: redis.Redis, tmp_path,
    trusted: str, statuses: list[int], counts: dict[str, int],
) -> None:
    """`reco run ingest` as deployed (real uvicorn) behind a load balancer on 127.0.0.1 that
    forwards clients 203.0.113.1 (four requests) and 203.0.113.2: the per-IP limit of 3 counts
    whom RECO_FORWARDED_ALLOW_IPS says."""
    answers = _behind_a_proxy(settings, tmp_path, "ingest", trusted, lambda base, headers: (
        httpx.post(f"{base}/events", json=event("u1"), headers=headers, timeout=10)))

    assert answers == statuses
    assert _ip_counts(redis_client, "ingest") == counts


@pytest.mark.parametrize(("trusted", "statuses", "counts"), [
    ("127.0.0.1", [200, 200, 200, 429, 200], {"203.0.113.1": 4, "203.0.113.2": 1}),
    ("10.9.9.9", [200, 200, 200, 429, 429], {"127.0.0.1": 5}),
])
def test_recommendations_limit_the_client_behind_a_trusted_proxy(
    settings: Settings, redis_client: redis.Redis, tmp_path,
    trusted: str, statuses: list[int], counts: dict[str, int],
) -> None:
    """The same for `reco run recommendations`, on /popular (limited per client IP)."""
    answers = _behind_a_proxy(settings, tmp_path, "recommendations", trusted,
                              lambda base, headers: httpx.get(f"{base}/popular",
                                                              headers=headers, timeout=10))

    assert answers == statuses
    assert _ip_counts(redis_client, "reco") == counts


def _behind_a_proxy(settings: Settings, tmp_path, service: str, trusted: str,
                    request: Callable[[str, dict[str, str]], httpx.Response]) -> list[int]:
    """Start `reco run <service>` with the limits of LIMITS and RECO_FORWARDED_ALLOW_IPS
    `trusted`; the statuses of four requests forwarded for 203.0.113.1, then one for .2."""
    port = free_port()
    env = process_env(settings, RECO_INGEST_PORT=str(port), RECO_RECO_PORT=str(port),
                      RECO_FORWARDED_ALLOW_IPS=trusted,
                      **{f"RECO_{name.upper()}": str(value) for name, value in LIMITS.items()})
    proc = start_process(service, env, tmp_path)
    try:
        assert wait_until(lambda: tcp_open("127.0.0.1", port), 60,
                          alive=lambda: proc.poll() is None), f"{service} did not start"
        return [request(f"http://127.0.0.1:{port}", {"X-Forwarded-For": client}).status_code
                for client in ["203.0.113.1"] * 4 + ["203.0.113.2"]]
    finally:
        proc.terminate()
        proc.wait(20)


def _ip_counts(redis_client: redis.Redis, service: str) -> dict[str, int]:
    """Requests counted per client IP by `service`'s limiter."""
    prefix = keys.rate_limit(service, "ip", "")
    return {key.removeprefix(prefix): int(redis_client.get(key))
            for key in redis_client.keys(prefix + "*")}
