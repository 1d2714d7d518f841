"""Fixtures of the security tests: keys, tokens, certificates, the two apps with auth on."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from reco.settings import Settings
from serving import ingest, recommendations

API_KEY = "test-api-key-0123456789abcdef"
OTHER_KEY = "second-service-key-9876543210"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"


def make_token(sub: str | None, key: str | bytes = JWT_SECRET, algorithm: str = "HS256",
               expires_in_s: float = 300.0, **claims) -> str:
    payload = dict(claims)
    if sub is not None:
        payload["sub"] = sub
    if expires_in_s is not None:
        payload["exp"] = int(time.time() + expires_in_s)
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rsa_pair() -> tuple[bytes, str]:
    """(private key PEM, public key PEM) of a fresh 2048-bit RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key, written as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[bytes, str]:
    return rsa_pair()


@pytest.fixture
def secure(settings: Settings) -> Settings:
    """The test's settings with auth on (HS256) and no rate limits."""
    return settings.model_copy(update={
        "auth_enabled": True, "api_keys": Settings(api_keys=f"{API_KEY},{OTHER_KEY}").api_keys,
        "jwt_secret": Settings(jwt_secret=JWT_SECRET).jwt_secret,
        "popular_snapshot_refresh_s": 3600.0, "ingest_ack_timeout_s": 2.0})


@pytest.fixture
def reco_client() -> Callable:
    """`with reco_client(settings) as client:` the recommendation app in process."""

    @contextmanager
    def _make(settings: Settings) -> Iterator[TestClient]:
        with TestClient(recommendations.create_app(settings)) as client:
            yield client

    return _make


@pytest.fixture
def ingest_client() -> Callable:
    """`async with ingest_client(settings) as client:` the ingest app with its lifespan."""

    @asynccontextmanager
    async def _make(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        app = ingest.create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as c:
                yield c

    return _make
