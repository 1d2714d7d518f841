"""API keys on ingest writes, JWT on the recommendation endpoints (HS256 and RS256)."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import jwt
import psycopg
import pytest
import redis

from reco import privacy
from reco.settings import Settings
from serving import security
from tests.security.conftest import (
    API_KEY,
    JWT_SECRET,
    OTHER_KEY,
    bearer,
    make_token,
    rsa_pair,
)

pytestmark = pytest.mark.integration


def event(user: str = "u1") -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": "i1",
            "event_type": "view"}


WRITES = [
    ("POST", "/events", event()),
    ("POST", "/events/batch", {"events": [event()]}),
    ("PUT", "/items/i1", {"category": "shoes"}),
    ("POST", "/items/batch", {"items": [{"item_id": "i2", "category": "hats"}]}),
    ("DELETE", "/users/u9", None),
    ("GET", f"/erasures/{uuid.uuid4()}", None),  # a read, but of what users asked erased
]


async def test_ingest_writes_need_a_valid_api_key(
    secure: Settings, ingest_client, kafka_topics: dict, pg: psycopg.Connection,
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ingest_client(secure) as client:
        for method, path, body in WRITES:
            missing = await client.request(method, path, json=body)
            wrong = await client.request(method, path, json=body,
                                         headers={"X-API-Key": "not-" + API_KEY})
            assert missing.status_code == 401, path
            assert missing.json() == {
                "detail": "missing API key: send it in the X-API-Key header"}
            assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
            assert wrong.status_code == 401, path
            assert wrong.json() == {"detail": "invalid API key"}
            for key in (API_KEY, OTHER_KEY):  # every configured key works
                ok = await client.request(method, path, json=body, headers={"X-API-Key": key})
                assert ok.status_code in (200, 202), (path, ok.text)
        # Reads stay open (load balancers and Prometheus have no keys).
        for path in ("/health", "/ready", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        # Bad input with a good key is still a 422; a bad key is refused before the body.
        invalid = await client.post("/events", content=b"{", headers={"X-API-Key": API_KEY})
        assert invalid.status_code == 422
        # A 32 MB key took ~1 s of the event loop to hash: refused by its length first.
        huge = await client.post("/events", content=b"{}", headers={"X-API-Key": "k" * 100_000})
        assert (huge.status_code, huge.json()) == (
            401, {"detail": f"API key over {security.MAX_CREDENTIAL_CHARS} characters"})
    assert API_KEY not in caplog.text and "not-" + API_KEY not in caplog.text


async def test_auth_off_by_default(settings: Settings, ingest_client, kafka_topics) -> None:
    assert settings.auth_enabled is False
    async with ingest_client(settings) as client:
        assert (await client.post("/events", json=event())).status_code == 202
        assert "securitySchemes" not in (await client.get("/openapi.json")).json().get(
            "components", {})


def test_reco_jwt_hs256(secure: Settings, reco_client, redis_client,
                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_token("u1")
    expired = make_token("u1", expires_in_s=-120)  # beyond the 10 s leeway
    forged = make_token("u1", key="another-secret-0123456789abcdef0123")
    no_exp = make_token("u1", expires_in_s=None)
    no_sub = make_token(None)
    unsigned = jwt.encode({"sub": "u1", "exp": 9_999_999_999}, None, algorithm="none")
    cases = [
        ({}, 401, "missing bearer token: send 'Authorization: Bearer <JWT>'"),
        ({"Authorization": f"Basic {good}"}, 401, "Authorization header must be 'Bearer <JWT>'"),
        (bearer("not.a.jwt"), 401, "malformed token"),
        (bearer(expired), 401, "token expired"),
        (bearer(forged), 401, "token signature is invalid"),
        (bearer(no_exp), 401, "token has no 'exp' claim"),
        (bearer(no_sub), 401, "token has no 'sub' claim"),
        (bearer(unsigned), 401, "token algorithm is not accepted"),
        (bearer(make_token("u2")), 403, "token subject does not match user_id"),
    ]
    with reco_client(secure) as client:
        for headers, status, reason in cases:
            response = client.get("/recommendations", params={"user_id": "u1"}, headers=headers)
            assert (response.status_code, response.json()) == (status, {"detail": reason})
            assert response.headers["www-authenticate"].startswith("Bearer")
            for secret in (JWT_SECRET, good, forged, expired):
                assert secret not in response.text
        ok = client.get("/recommendations", params={"user_id": "u1", "k": 3},
                        headers=bearer(good))
        assert ok.status_code == 200 and ok.json()["user_id"] == "u1"
        # 401 comes before parameter validation; with a token, bad parameters are 422.
        assert client.get("/recommendations", params={"k": 0}).status_code == 401
        assert client.get("/recommendations", params={"user_id": "u1", "k": 0},
                          headers=bearer(good)).status_code == 422
        # The other user-facing routes need a valid token too (any subject).
        assert client.get("/popular").status_code == 401
        assert client.get("/items/A/similar", headers=bearer(expired)).status_code == 401
        assert client.get("/popular", headers=bearer(make_token("u9"))).status_code == 200
        assert client.get("/items/A/similar", headers=bearer(good)).status_code == 200
        assert client.get("/health").status_code == 200
    for secret in (JWT_SECRET, good, forged, expired):
        assert secret not in caplog.text


def test_numeric_dates_must_be_json_numbers(secure: Settings, reco_client, redis_client) -> None:
    """RFC 7519: a NumericDate is a JSON number. PyJWT int()s the claim, so a string passed:
    "exp": "9999999999" made a token that never expired."""
    now = int(time.time())
    strings = {"exp": {"exp": "9999999999"}, "nbf": {"exp": now + 300, "nbf": str(now - 60)},
               "iat": {"exp": now + 300, "iat": str(now)}}
    with reco_client(secure) as client:
        def get(claims: dict) -> httpx.Response:
            token = jwt.encode({"sub": "u1", **claims}, JWT_SECRET, algorithm="HS256")
            return client.get("/recommendations", params={"user_id": "u1"},
                              headers=bearer(token))

        for claim, claims in strings.items():
            refused = get(claims)
            reason = f"token '{claim}' claim must be a number (NumericDate)"
            assert (refused.status_code, refused.json()) == (401, {"detail": reason}), claim
            assert refused.headers["www-authenticate"] == (
                f'Bearer error="invalid_token", error_description="{reason}"')
        # Numbers, fractional ones included, are NumericDates.
        assert get({"exp": now + 300.5, "nbf": now - 60.25, "iat": now}).status_code == 200


@pytest.mark.parametrize("key_source", ["pem", "file"])
def test_reco_jwt_rs256(secure: Settings, reco_client, redis_client, rsa_keys, tmp_path,
                        key_source: str) -> None:
    private, public = rsa_keys
    other_private, _ = rsa_pair()
    if key_source == "file":
        (tmp_path / "jwt.pub").write_text(public)
        public = str(tmp_path / "jwt.pub")
    settings = secure.model_copy(update={"jwt_algorithm": "RS256", "jwt_public_key": public})
    with reco_client(settings) as client:
        def status(token: str, user: str = "u1") -> tuple[int, dict]:
            r = client.get("/recommendations", params={"user_id": user}, headers=bearer(token))
            return r.status_code, r.json()

        assert status(make_token("u1", private, "RS256"))[0] == 200
        assert status(make_token("u1", private, "RS256"), "u2") == (
            403, {"detail": "token subject does not match user_id"})
        assert status(make_token("u1", other_private, "RS256")) == (
            401, {"detail": "token signature is invalid"})
        # Algorithm confusion: an HS256 token "signed" with the public key is refused.
        assert status(make_token("u1", JWT_SECRET)) == (
            401, {"detail": "token algorithm is not accepted"})
        assert status(make_token("u1", private, "RS256", expires_in_s=-60)) == (
            401, {"detail": "token expired"})


def test_audience_checked_when_configured(secure: Settings, reco_client, redis_client) -> None:
    settings = secure.model_copy(update={"jwt_audience": "shop"})
    with reco_client(settings) as client:
        def get(token: str) -> int:
            return client.get("/recommendations", params={"user_id": "u1"},
                              headers=bearer(token)).status_code

        assert get(make_token("u1", aud="shop")) == 200
        assert get(make_token("u1", aud="admin")) == 401
        assert get(make_token("u1")) == 401
    # Unset, a token issued for another service (naming its audience) is refused too (RFC
    # 7519): it used to pass.
    with reco_client(secure) as client:
        other = client.get("/recommendations", params={"user_id": "u1"},
                           headers=bearer(make_token("u1", aud="admin")))
        assert (other.status_code, other.json()) == (401, {
            "detail": "token names an audience: set RECO_JWT_AUDIENCE to accept it"})
        plain = client.get("/recommendations", params={"user_id": "u1"},
                           headers=bearer(make_token("u1")))
        assert plain.status_code == 200
        # A 32 MB token took ~3 s of the event loop to refuse: its length is checked first.
        huge = client.get("/popular", headers={"Authorization": "Bearer " + "a" * 100_000})
        assert (huge.status_code, huge.json()) == (
            401, {"detail": f"token over {security.MAX_CREDENTIAL_CHARS} characters"})


def test_fallback_log_pseudonymises_user_ids(
    settings: Settings, reco_client, caplog: pytest.LogCaptureFixture
) -> None:
    from reco.stack.health import free_port

    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                       "popular_snapshot_refresh_s": 3600.0})
    privacy.configure("pseudonym-test-key")
    caplog.set_level(logging.WARNING)
    with reco_client(dead) as client:
        response = client.get("/recommendations", params={"user_id": "alice@example.com"})
    assert response.status_code == 200 and response.json()["strategy"] == "fallback"
    assert "alice@example.com" not in caplog.text
    assert privacy.pseudonym("alice@example.com") in caplog.text
    assert privacy.pseudonym("alice@example.com") != privacy.pseudonym("bob@example.com")
    privacy.configure("another-key")
    assert privacy.pseudonym("alice@example.com") not in caplog.text  # keyed, not a plain hash


def test_redaction_filter_scrubs_secrets_from_messages_and_tracebacks() -> None:
    redactor = privacy.RedactSecrets([API_KEY, JWT_SECRET])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s key %s", (
        f"redis://:{JWT_SECRET}@host", API_KEY), None)
    try:
        raise RuntimeError(f"auth failed with {API_KEY}")
    except RuntimeError:
        import sys
        record.exc_info = sys.exc_info()
    assert redactor.filter(record)
    text = logging.Formatter().format(record)
    assert API_KEY not in text and JWT_SECRET not in text
    assert "url redis://:***@host key ***" in text and "auth failed with ***" in text


@pytest.mark.parametrize(("message", "redacted"), [
    # The local stack's default PostgreSQL password "reco" inside words and names: kept.
    ("serving fallback recommendations to user u:1",
     "serving fallback recommendations to user u:1"),
    ("joined group reco-processor via reco.settings", "joined group reco-processor via "
                                                      "reco.settings"),
    # Wherever punctuation delimits it: redacted.
    ("connect to postgresql://app:reco@db:5432/app failed",
     "connect to postgresql://app:***@db:5432/app failed"),
    ("GET /login?user=a&password=reco&next=%2F", "GET /login?user=a&password=***&next=%2F"),
    ("header X-API-Key: reco", "header X-API-Key: ***"),
    ('body {"password": "reco", "n": 1}', 'body {"password": "***", "n": 1}'),
    ("form pw%3Dreco%26x", "form pw%3D***%26x"),  # after a percent-escape
    # Ending a sentence, or with '-' or '_' around it but no word joined: redacted.
    ("the password is reco.", "the password is ***."), ("pw=reco-", "pw=***-"),
    ("password hunter2x.", "password ***."),
    # As a URL carries it (Settings.pg_url escapes the password).
    ("connect postgresql://app:p%2Fw%2Bd%40x@db/app", "connect postgresql://app:***@db/app"),
    # A production-length secret is redacted even inside a word.
    (f"token{JWT_SECRET}x", "token***x"),
])
def test_redaction_takes_short_secrets_only_as_whole_tokens(message: str, redacted: str) -> None:
    redactor = privacy.RedactSecrets(["reco", "hunter2x", "p/w+d@x", JWT_SECRET])
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, message, None, None)
    assert redactor.filter(record)
    assert record.getMessage() == redacted


def test_verified_token_cache_still_enforces_expiry() -> None:
    from serving.security import AuthError, JwtCheck

    check = JwtCheck(Settings(jwt_secret=JWT_SECRET, jwt_leeway_s=0))
    token = make_token("u1", expires_in_s=2.5)  # exp is whole seconds: 1.5 to 2.5 s from now
    assert check.subject(f"Bearer {token}") == "u1"
    assert check.subject(f"Bearer {token}") == "u1"  # from the cache
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(AuthError, match="token signature is invalid"):
        check.subject(f"Bearer {forged}")  # the cache is keyed by the whole token
    time.sleep(3.0)
    with pytest.raises(AuthError, match="token expired"):
        check.subject(f"Bearer {token}")
