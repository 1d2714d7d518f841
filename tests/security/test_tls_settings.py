"""HTTPS from settings (both services, real uvicorn processes) and production refusals."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reco.settings import Settings
from reco.stack.health import free_port, tcp_open, wait_until
from tests.security.conftest import API_KEY, JWT_SECRET, self_signed_cert

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["ingest", "recommendations"])
def test_services_answer_over_https(service: str, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    dead = free_port()  # no stores needed for /health; both services start without them
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECO_TLS_CERTFILE": str(cert),
           "RECO_TLS_KEYFILE": str(key), "RECO_INGEST_PORT": str(port),
           "RECO_RECO_PORT": str(port), "RECO_REDIS_URL": f"redis://127.0.0.1:{dead}/0",
           "RECO_KAFKA_BOOTSTRAP": f"127.0.0.1:{dead}", "RECO_PG_PORT": str(dead),
           "RECO_INGEST_ACK_TIMEOUT_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reco.cli", "run", service], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: tcp_open("127.0.0.1", port), 60,
                          alive=lambda: proc.poll() is None), proc.stdout.read().decode()
        trusted = ssl.create_default_context(cafile=str(cert))
        response = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "ok"
        assert response.http_version == "HTTP/1.1" and response.url.scheme == "https"
        with pytest.raises(httpx.HTTPError):  # the port speaks TLS only
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError):  # and its certificate is not publicly trusted
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.terminate()
        proc.wait(20)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RECO_TLS_CERTFILE and RECO_TLS_KEYFILE"):
        Settings(tls_certfile=tmp_path / "tls.crt")
    assert Settings(tls_certfile="", tls_keyfile="").tls_certfile is None  # compose's unset


PRODUCTION = {"env": "production", "pg_password": "pg-" + "x" * 20,
              "airflow_secret": "af-" + "y" * 20, "auth_enabled": True,
              "api_keys": API_KEY, "jwt_secret": JWT_SECRET,
              "log_pseudonym_key": "pseudonym-" + "z" * 20}


@pytest.mark.parametrize(("override", "refusal"), [
    ({"auth_enabled": False}, "RECO_AUTH_ENABLED must be true"),
    ({"api_keys": ""}, "RECO_API_KEYS must hold real keys"),
    ({"api_keys": f"{API_KEY},short"}, "RECO_API_KEYS must hold real keys"),
    ({"jwt_secret": "local-dev-only"}, "RECO_JWT_SECRET must be a real secret"),
    ({"jwt_secret": "too-short"}, "RECO_JWT_SECRET must be a real secret"),
    ({"jwt_algorithm": "RS256"}, "RECO_JWT_PUBLIC_KEY must be set"),
    ({"log_pseudonym_key": "local-dev-only"}, "RECO_LOG_PSEUDONYM_KEY must be set"),
    ({"log_pseudonym_key": "x"}, r"RECO_LOG_PSEUDONYM_KEY must be set to a real secret \(16\+"),
    ({"log_pseudonym_previous_keys": "old-pseudonym-key-0123456789,with"},
     "RECO_LOG_PSEUDONYM_PREVIOUS_KEYS must hold keys of 16\\+ characters"),
    ({"pg_password": ""}, r"RECO_PG_PASSWORD must be set to a real secret \(16\+"),
    ({"pg_password": "short-password1"}, "RECO_PG_PASSWORD must be set to a real secret"),
    ({"airflow_secret": "x"}, "RECO_AIRFLOW_SECRET must be set to a real secret"),
])
def test_production_refuses_insecure_auth(override: dict, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal) as exc:
        Settings(**{**PRODUCTION, **override})
    for secret in (API_KEY, JWT_SECRET, PRODUCTION["pg_password"]):
        assert secret not in str(exc.value)  # errors name settings, never values


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_API_KEYS", f" {API_KEY} , key-two-0123456789abcdef ")
    settings = Settings(**{k: v for k, v in PRODUCTION.items() if k != "api_keys"})
    assert [k.get_secret_value() for k in settings.api_keys] == [
        API_KEY, "key-two-0123456789abcdef"]
    assert API_KEY not in repr(settings) and JWT_SECRET not in repr(settings)
