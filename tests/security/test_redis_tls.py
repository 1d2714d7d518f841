"""The project's own Redis clients speak TLS to a `rediss://` URL (a real TLS Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from reco.stack import servers as stack_servers
from reco.stack.health import free_port
from serving.reco_aio import AsyncPipelineClient
from serving.reco_redis import PipelineClient, RedisDown
from streaming.redis_pipe import RedisPipe
from tests.security.conftest import self_signed_cert
from tests.servers import ServerProcess, remove, scratch_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[int, Path]]:
    """Redis listening on TLS only: (port, the certificate its clients must trust)."""
    workdir = scratch_dir("redis-tls")
    cert, key = self_signed_cert(workdir)
    port = free_port()
    command = stack_servers.redis_command(workdir / "data", 0, persist=False) + [
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    server = ServerProcess("redis-tls", command, port, workdir).start()
    try:
        yield port, cert
    finally:
        remove(server)


@pytest.fixture
def tls_url(tls_redis: tuple[int, Path]) -> str:
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/3?ssl_ca_certs={cert}"
    redis.Redis.from_url(url).flushdb()  # redis-py's own TLS: the reference
    return url


def test_the_api_clients_speak_tls(tls_url: str) -> None:
    sync = PipelineClient(tls_url, timeout_s=2.0)
    try:
        assert sync.execute([("SET", "tls:k", "v"), ("GET", "tls:k")]) == ["OK", "v"]
    finally:
        sync.close()

    async def scenario() -> list:
        client = AsyncPipelineClient(tls_url, timeout_s=2.0)
        try:
            return await client.execute([("GET", "tls:k")])
        finally:
            client.close()
    assert asyncio.run(scenario()) == ["v"]
    assert redis.Redis.from_url(tls_url).get("tls:k") == b"v"  # in the URL's database


async def test_the_processor_client_speaks_tls(tls_url: str) -> None:
    pipe = RedisPipe(tls_url)
    try:
        assert await pipe.execute([("SET", "tls:p", "1")], transaction=True) == [b"OK"]
    finally:
        await pipe.close()
    assert redis.Redis.from_url(tls_url).get("tls:p") == b"1"


def test_the_certificate_is_verified_and_plain_tcp_is_refused(tls_redis) -> None:
    port, _ = tls_redis
    untrusted = PipelineClient(f"rediss://127.0.0.1:{port}/0", timeout_s=2.0)
    with pytest.raises(RedisDown, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.execute([("PING",)])
    plain = PipelineClient(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    with pytest.raises(RedisDown):  # what every call did before rediss:// was honoured
        plain.execute([("PING",)])
    unverified = PipelineClient(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none",
                                timeout_s=2.0)
    assert unverified.execute([("PING",)]) == ["PONG"]  # asked for explicitly
    for client in (untrusted, plain, unverified):
        client.close()
