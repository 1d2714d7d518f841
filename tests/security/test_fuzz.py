"""Property-based fuzzing of both services from their OpenAPI specs (schemathesis, in process).

Real backing servers (Kafka, PostgreSQL, Redis from the session fixtures); generated requests,
valid (positive) and schema-violating (negative), must never get a 5xx nor a response that
breaks the documented schema (status code, content type, body). Bounded: 35 positive and 15
negative examples per operation. Every operation is run even after a failure, and the test
reports all of them. (schemathesis' own pytest plugin does not work with pytest 9 here, so the
cases are drawn with hypothesis directly from each operation's strategy.)

The examples are the same on every run (derandomized), so that CI's verdict depends on the
code, not on the draw; `RECO_FUZZ_RANDOM=1` draws new ones, to look for new failures (each one
found becomes a case in test_fuzz_regressions.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from reco.settings import Settings
from serving import ingest, recommendations
from tests.security.conftest import API_KEY, JWT_SECRET, bearer, make_token

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 35, GenerationMode.NEGATIVE: 15}  # 50 per operation


def _property(strategy, examples: int, seen: list, headers: dict | None):
    @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                         derandomize=os.environ.get("RECO_FUZZ_RANDOM") != "1",
                         suppress_health_check=list(HealthCheck),
                         phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink])
    @given(case=strategy)
    def run(case) -> None:
        seen.append(case)
        case.call_and_validate(checks=CHECKS, headers=headers)

    return run


def fuzz(schema, headers: dict | None = None) -> tuple[list[str], int]:
    """(failures, cases run) over every operation and generation mode."""
    failures: list[str] = []
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():
            seen: list = []
            started = time.perf_counter()

            run = _property(operation.as_strategy(generation_mode=mode), examples, seen,
                            headers)
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing to make invalid: no parameters, no body
            except BaseException as exc:  # FailureGroup is a BaseExceptionGroup: collect all
                if not isinstance(exc, Exception | BaseExceptionGroup):
                    raise
                parts = getattr(exc, "exceptions", [exc])
                failures.extend(f"{operation.label} [{mode.value}]: {part!s:.1500}"
                                for part in parts)
            count += len(seen)
            print(f"{operation.label} [{mode.value}]: {len(seen)} cases in "
                  f"{time.perf_counter() - started:.1f}s")
    return failures, count


@pytest.fixture
def shutdown_apps() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()  # stop producers and pools started by schemathesis' client


def test_ingest_fuzz(settings: Settings, kafka_topics: dict, pg, redis_client,
                     shutdown_apps) -> None:
    app = ingest.create_app(settings.model_copy(update={"ingest_ack_timeout_s": 10.0}))
    failures, count = fuzz(schemathesis.openapi.from_asgi("/openapi.json", app))
    assert not failures, "\n\n".join(failures)
    assert count >= 150


def test_recommendations_fuzz(settings: Settings, redis_client, shutdown_apps) -> None:
    app = recommendations.create_app(settings.model_copy(update={
        "popular_snapshot_refresh_s": 3600.0}))
    failures, count = fuzz(schemathesis.openapi.from_asgi("/openapi.json", app))
    assert not failures, "\n\n".join(failures)
    assert count >= 150


def test_fuzz_with_auth_and_limits_on(settings: Settings, kafka_topics: dict, pg, redis_client,
                                      shutdown_apps) -> None:
    """Auth and rate limits on: 401/403/429 are documented answers, never a 5xx."""
    secure = settings.model_copy(update={
        "auth_enabled": True, "api_keys": Settings(api_keys=API_KEY).api_keys,
        "jwt_secret": Settings(jwt_secret=JWT_SECRET).jwt_secret,
        "rate_limit_ingest_per_s": 40.0, "rate_limit_reco_per_s": 40.0,
        "popular_snapshot_refresh_s": 3600.0})
    failures, count = fuzz(schemathesis.openapi.from_asgi(
        "/openapi.json", ingest.create_app(secure)), {"X-API-Key": API_KEY})
    reco_failures, reco_count = fuzz(schemathesis.openapi.from_asgi(
        "/openapi.json", recommendations.create_app(secure)), bearer(make_token("u1")))
    assert not failures + reco_failures, "\n\n".join(failures + reco_failures)
    assert count + reco_count >= 300
