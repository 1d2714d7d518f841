"""Authentication of both HTTP services, and their rate limits wired into the routes.

- Ingest writes (events, catalogue) need one of `settings.api_keys` in the `X-API-Key` header.
- Recommendation endpoints need a JWT (`Authorization: Bearer`, HS256 with `jwt_secret` or
  RS256 with `jwt_public_key`) carrying `exp` and `sub`; `sub` must equal the `user_id` asked
  about (403 otherwise).
Failures are 401/403 with a reason that names what is wrong, never what was presented or
expected: keys, secrets and tokens appear in no log line and no response. Credentials refused
count against their client IP (`RECO_RATE_LIMIT_AUTH_FAILURES`): past the limit, 429.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jwt
import orjson
from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.responses import Response

from reco import privacy
from reco.settings import Settings
from serving.rate_limit import FailureLimiter, RateLimited, RateLimiter
from serving.reco_aio import AsyncPipelineClient

T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"
VERIFIED_CACHE_MAX = 10_000
_api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="Service key for ingest and catalogue writes")
_bearer_scheme = HTTPBearer(auto_error=False, bearerFormat="JWT",
                            description="User token; its subject must equal user_id")


class AuthError(Exception):
    """HTTP 401 (no or bad credentials) or 403 (valid credentials, not for this resource)."""

    def __init__(self, status: int, reason: str, challenge: str, guess: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.challenge = challenge
        # Whether it counts against the client IP's failures (`verified`): a wrong key or
        # signature could be a guess. No credential at all, or a token signed with our key but
        # expired or for another audience (a shop backend forwarding its users' stale tokens),
        # is not: counting those locked whole shops out.
        self.guess = guess


def _json(content: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def auth_response(exc: AuthError) -> Response:
    return _json({"detail": exc.reason}, exc.status, {"WWW-Authenticate": exc.challenge})


def limited_response(exc: RateLimited) -> Response:
    return _json({"detail": exc.detail}, 429, {"Retry-After": str(exc.retry_after_s)})


def install_handlers(app: FastAPI) -> None:
    """Map AuthError and RateLimited raised by route dependencies to responses."""

    async def _auth(_: Request, exc: Exception) -> Response:
        return auth_response(exc)  # type: ignore[arg-type]

    async def _limited(_: Request, exc: Exception) -> Response:
        return limited_response(exc)  # type: ignore[arg-type]

    app.add_exception_handler(AuthError, _auth)
    app.add_exception_handler(RateLimited, _limited)


def configure_logging(settings: Settings) -> None:
    """Pseudonymise user ids with the configured key; redact secrets from every log handler."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    privacy.configure(settings.log_pseudonym_key)
    secrets = [k.get_secret_value() for k in settings.api_keys]
    secrets += [s.get_secret_value() for s in (settings.jwt_secret, settings.pg_password,
                                               settings.airflow_secret,
                                               settings.log_pseudonym_key)]
    secrets += settings.pseudonym_keys[1:]
    privacy.install_redaction(secrets)


def _reveal(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def client_ip(request: Request) -> str:
    """The client's address as uvicorn resolved it: X-Forwarded-For's when the connection came
    from a proxy in RECO_FORWARDED_ALLOW_IPS, the connection's otherwise."""
    return request.client.host if request.client else "unknown"


class ApiKeyCheck:
    """Constant-time comparison against the configured keys (held only as digests)."""

    def __init__(self, keys: list[SecretStr] | list[str]) -> None:
        self._digests = [hashlib.sha256(_reveal(k).encode()).digest() for k in keys]

    def verify(self, presented: str | None) -> None:
        challenge = f'ApiKey header="{API_KEY_HEADER}"'
        if not presented:
            raise AuthError(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            challenge, guess=False)
        if len(presented) > MAX_CREDENTIAL_CHARS:  # refused before hashing megabytes
            raise AuthError(401, f"API key over {MAX_CREDENTIAL_CHARS} characters", challenge)
        digest = hashlib.sha256(presented.encode()).digest()
        # Compare with every key (no early exit) so timing does not tell which one is close.
        matches = [hmac.compare_digest(digest, d) for d in self._digests]
        if not any(matches):
            raise AuthError(401, "invalid API key", challenge)


# Far above any real JWT (a few hundred bytes to ~4 KB) or API key, far below what a header
# can carry: a 32 MB token took ~3 s of the event loop to refuse.
MAX_CREDENTIAL_CHARS = 16_384

NUMERIC_DATES = ("exp", "nbf", "iat")
# (error, reason, whether it could be a guess): PyJWT checks the signature before the claims,
# so a refused claim means a token signed with our key.
_JWT_REASONS: list[tuple[type[Exception], str, bool]] = [
    (jwt.ExpiredSignatureError, "token expired", False),
    (jwt.ImmatureSignatureError, "token not valid yet", False),
    (jwt.InvalidSignatureError, "token signature is invalid", True),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted", True),
    (jwt.DecodeError, "malformed token", True),
]


class JwtCheck:
    """Verifies user tokens; `subject` returns the `sub` claim of a valid one."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        if self.algorithm == "HS256":
            self.key: str = settings.jwt_secret.get_secret_value()
        else:
            if not settings.jwt_public_key:
                raise ValueError("RECO_JWT_PUBLIC_KEY must be set for RS256")
            self.key = _pem(settings.jwt_public_key)
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_s
        # Verified tokens -> (subject, exp): a client reuses its token, and a signature check
        # (~90 us for HS256 here) is a large share of a cached recommendation's server time.
        self._verified: dict[str, tuple[str, float]] = {}

    def subject(self, authorization: str | None) -> str:
        if not authorization:
            raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <JWT>'",
                            "Bearer", guess=False)
        if len(authorization) > MAX_CREDENTIAL_CHARS:  # refused before decoding megabytes
            raise self._invalid(f"token over {MAX_CREDENTIAL_CHARS} characters")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "Authorization header must be 'Bearer <JWT>'", "Bearer")
        token = token.strip()
        known = self._verified.get(token)
        if known is not None:
            if time.time() <= known[1] + self.leeway:
                return known[0]
            del self._verified[token]  # expired since: verify again for the precise reason
        try:
            # A token naming an audience is refused unless RECO_JWT_AUDIENCE is one of them
            # (RFC 7519 4.1.3): one issued for another service is not good here.
            claims = jwt.decode(token, self.key, algorithms=[self.algorithm],
                                audience=self.audience, leeway=self.leeway,
                                options={"require": ["exp", "sub"]})
        except jwt.MissingRequiredClaimError as exc:
            raise self._invalid(f"token has no '{exc.claim}' claim", guess=False) from None
        except jwt.InvalidAudienceError:
            reason = ("token audience is not accepted" if self.audience is not None else
                      "token names an audience: set RECO_JWT_AUDIENCE to accept it")
            raise self._invalid(reason, guess=False) from None
        except jwt.InvalidTokenError as exc:
            reason, guess = next(((r, g) for t, r, g in _JWT_REASONS if isinstance(exc, t)),
                                 ("invalid token", True))
            raise self._invalid(reason, guess) from None
        # Below, the signature is valid: refusals are not guesses.
        wrong = next((c for c in NUMERIC_DATES if c in claims and not _numeric(claims[c])), None)
        if wrong is not None:
            raise self._invalid(f"token '{wrong}' claim must be a number (NumericDate)",
                                guess=False)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise self._invalid("token subject must be a non-empty string", guess=False)
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (subject, float(claims["exp"]))
        return subject

    @staticmethod
    def _invalid(reason: str, guess: bool = True) -> AuthError:
        return AuthError(401, reason, f'Bearer error="invalid_token", error_description="{reason}"',
                         guess)


def _numeric(value: Any) -> bool:
    # RFC 7519 2: a NumericDate is a JSON number. PyJWT int()s what it is given, so it took
    # "exp": "9999999999" (a string) as a date.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require_subject(subject: str, user_id: str) -> None:
    if subject != user_id:
        raise AuthError(403, "token subject does not match user_id",
                        'Bearer error="insufficient_scope"')


def _pem(value: str) -> str:
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


# -- refused credentials --------------------------------------------------------------------


def failure_limiter(service: str, settings: Settings) -> FailureLimiter | None:
    """The limit on refused credentials per client IP, when auth is on and the limit is set."""
    if not settings.auth_enabled or settings.rate_limit_auth_failures <= 0:
        return None
    window = settings.rate_limit_auth_window_s
    return FailureLimiter(service, "auth_ip", settings.rate_limit_auth_failures / window,
                          window, what="failed authentication attempts")


async def verified(failures: FailureLimiter | None, request: Request, client: Any,
                   verify: Callable[[], T]) -> T:
    """`verify()`'s result; first RateLimited if the client IP is blocked, and an AuthError
    that could be a guess (`AuthError.guess`) counts against it (RateLimited once over the
    limit). `client`: the service's Redis client (AsyncPipelineClient or redis.asyncio)."""
    if failures is None:
        return verify()
    ip = client_ip(request)
    failures.check(ip)  # in process: a valid credential costs no Redis round trip
    try:
        return verify()
    except AuthError as exc:
        if exc.guess:
            if isinstance(client, AsyncPipelineClient):
                await failures.hit(client, ip)
            else:
                await failures.hit_async(client, ip)
        raise


# -- ingest ---------------------------------------------------------------------------------


class IngestGuard:
    """Ingest writes: the API key (if auth is on), then the per-IP limit (raise AuthError or
    RateLimited). `check` serves the hot routes; `dependencies` the FastAPI ones."""

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self.keys = ApiKeyCheck(settings.api_keys) if settings.auth_enabled else None
        self.failures = failure_limiter("ingest", settings)
        self.limiter = (RateLimiter("ingest", "ip", settings.rate_limit_ingest_per_s,
                                    settings.rate_limit_window_s)
                        if settings.rate_limit_ingest_per_s > 0 else None)
        self.app = app

    @classmethod
    def create(cls, settings: Settings, app: FastAPI) -> IngestGuard | None:
        if not settings.auth_enabled and settings.rate_limit_ingest_per_s <= 0:
            return None
        install_handlers(app)
        return cls(settings, app)

    async def check(self, request: Request, api_key: str | None) -> None:
        keys = self.keys
        if keys is not None:
            await verified(self.failures, request, self.app.state.catalogue.redis,
                           lambda: keys.verify(api_key))
        if self.limiter is not None:
            await self.limiter.hit_async(self.app.state.catalogue.redis, client_ip(request))

    def dependencies(self) -> list[Any]:
        async def guard(request: Request,
                        api_key: Annotated[str | None, Security(_api_key_scheme)] = None) -> None:
            await self.check(request, api_key)

        async def limit(request: Request) -> None:
            await self.check(request, None)

        # Without auth the API key stays out of the documented schema.
        return [Depends(guard if self.keys is not None else limit)]


# -- recommendations ----------------------------------------------------------------------


class RecoGuard:
    """JWT + per-user rate limit for the recommendation API (one Redis command per request)."""

    def __init__(self, settings: Settings) -> None:
        self.jwt = JwtCheck(settings) if settings.auth_enabled else None
        self.failures = failure_limiter("reco", settings)
        # Without auth a user id is only a claim: counted per user alone, any client could
        # spend (and so exhaust) another user's budget. Counted per user and client IP, each
        # client spends its own, and a shop backend asking for all its users still has one
        # budget per user. With auth the subject is verified (it must equal user_id).
        scope = "user" if self.jwt is not None else "ip_user"
        self.limiter = (RateLimiter("reco", scope, settings.rate_limit_reco_per_s,
                                    settings.rate_limit_window_s)
                        if settings.rate_limit_reco_per_s > 0 else None)
        self.ip_limiter = (RateLimiter("reco", "ip", settings.rate_limit_reco_per_s,
                                       settings.rate_limit_window_s) if self.limiter else None)
        # The API's own asyncio client kind: a limit check never blocks the event loop.
        self.client = (AsyncPipelineClient(settings.redis_url, settings.reco_redis_timeout_s)
                       if self.limiter or self.failures else None)

    @classmethod
    def create(cls, settings: Settings, app: FastAPI) -> RecoGuard | None:
        if not settings.auth_enabled and settings.rate_limit_reco_per_s <= 0:
            return None
        install_handlers(app)
        return cls(settings)

    async def authenticate(self, request: Request) -> tuple[str | None, Response | None]:
        """(subject, None) or (None, the 401 or 429 response) for the hand-validated route."""
        if self.jwt is None:
            return None, None
        try:
            return await self._subject(request, self.jwt), None
        except AuthError as exc:
            return None, auth_response(exc)
        except RateLimited as exc:
            return None, limited_response(exc)

    async def _subject(self, request: Request, check: JwtCheck) -> str:
        return await verified(self.failures, request, self.client,
                              lambda: check.subject(request.headers.get("authorization")))

    def _limit_key(self, request: Request, user_id: str) -> str:
        # Client addresses hold no '/': the IP and the user id cannot run into each other.
        return user_id if self.jwt is not None else f"{client_ip(request)}/{user_id}"

    async def authorize(self, request: Request, subject: str | None,
                        user_id: str) -> Response | None:
        """None if the request may go on, else the 403 or 429 response."""
        try:
            if subject is not None:
                require_subject(subject, user_id)
            if self.limiter is not None:
                await self.limiter.hit(self.client,  # type: ignore[arg-type]
                                       self._limit_key(request, user_id))
        except AuthError as exc:
            return auth_response(exc)
        except RateLimited as exc:
            return limited_response(exc)
        return None

    def dependencies(self) -> list[Any]:
        """For the FastAPI routes without a user id: a valid token; limit per subject or IP."""

        async def guard(request: Request, credentials: Annotated[
                HTTPAuthorizationCredentials | None, Security(_bearer_scheme)] = None) -> None:
            subject = await self._subject(request, self.jwt) if self.jwt else None
            if subject is not None and self.limiter is not None:
                await self.limiter.hit(self.client, subject)  # type: ignore[arg-type]
            elif self.ip_limiter is not None:
                await self.ip_limiter.hit(self.client,  # type: ignore[arg-type]
                                          client_ip(request))

        return [Depends(guard)]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
