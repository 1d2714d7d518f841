"""Recommendation API (port 8081): routes validate, call `RecoService`, and map errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator
from starlette.routing import Route

from reco import scoring
from reco.events import PATH_ID_SCHEMA
from reco.settings import Settings
from serving import cors, reco_openapi, security, tls
from serving import reco_metrics as metrics
from serving.errors import invalid_response, request_errors
from serving.hot_routes import HEAD_TOO, HotRoutes, accept_head
from serving.http_metrics import HTTPMetrics
from serving.reco_params import ID_PATTERN, MAX_K, ParamErrors, int_text, parse_query
from serving.reco_route import PATH, RecommendationsEndpoint
from serving.reco_service import RecoService
from serving.reco_snapshots import GlobalSignals
from serving.reco_store import FeatureStore

log = logging.getLogger(__name__)
JSON = "application/json"

# Query first: FastAPI publishes its bounds as JSON Schema (minimum/maximum) only then.
K = Annotated[int, Query(ge=1, le=MAX_K, description="at most this many items"),
              BeforeValidator(lambda v: int_text(v) if isinstance(v, str) else v)]
Category = Annotated[str | None, Query(min_length=1, max_length=128)]


def create_app(settings: Settings) -> FastAPI:
    store = FeatureStore.from_settings(settings)
    signals = GlobalSignals(settings)
    service = RecoService(settings, store, signals)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scoring.warm_up()  # compiled (or loaded from disk) before the first request, not in it
        signals.start()
        try:
            yield
        finally:
            signals.stop()
            store.flush_cache_writes()
            store.close()

    def flush() -> None:
        if settings.reco_redis_in_threads:
            asyncio.get_running_loop().run_in_executor(None, store.flush_cache_writes)
        else:
            _background(store.flush_cache_writes_async())

    app = FastAPI(title="reco recommendations", lifespan=lifespan)
    app.state.service = service
    guard = security.RecoGuard.create(settings, app)  # JWT, per-user limit (issue 7)
    # The hot endpoint: a plain ASGI app (serving/hot_routes.py), also an ordinary route.
    endpoint = RecommendationsEndpoint(settings, service, store, guard, flush)
    route = Route(PATH, endpoint, methods=["GET"])
    app.router.routes.append(route)
    app.add_middleware(HotRoutes, routes={("GET", PATH): (endpoint, route)})
    cors.allow_cross_origin(app, settings, ("GET", "HEAD"), ("Authorization",))
    app.add_middleware(HTTPMetrics)  # added last: outermost, so it times the hot route too
    user_deps = guard.dependencies() if guard is not None else []
    reco_openapi.document(app, user_deps)
    hist = {e: metrics.LATENCY.labels(endpoint=e) for e in ("recommendations", "popular",
                                                            "similar")}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return invalid_response(request_errors(exc.errors()))

    @app.exception_handler(ParamErrors)
    async def _refused_query(_: Request, exc: ParamErrors) -> Response:
        return invalid_response(exc.detail)

    @app.get("/popular", response_model=reco_openapi.Popular,
             dependencies=[*user_deps, _query_of("k", "category")],
             responses=reco_openapi.UNPERSONAL_ERRORS, description=reco_openapi.POPULAR_DOC)
    async def popular(k: K = 20, category: Category = None) -> Response:
        start = time.perf_counter()
        items = service.popular(k, category)
        metrics.REQUESTS.labels(endpoint="popular", strategy="popular").inc()
        hist["popular"].observe(time.perf_counter() - start)
        return JSONResponse({"category": category, "items": items})

    @app.get("/items/{item_id:path}/similar", response_model=reco_openapi.Similar,
             dependencies=[*user_deps, _query_of("k")],
             responses={**reco_openapi.UNPERSONAL_ERRORS, **reco_openapi.UNADDRESSABLE_ID},
             description=reco_openapi.SIMILAR_DOC)
    async def similar(item_id: Annotated[str, Path(min_length=1, max_length=128,
                                                   pattern=ID_PATTERN,
                                                   json_schema_extra=PATH_ID_SCHEMA)],
                      k: K = 20) -> Response:
        start = time.perf_counter()
        found = await service.similar(item_id, k)
        metrics.REQUESTS.labels(endpoint="similar", strategy=found.strategy).inc()
        hist["similar"].observe(time.perf_counter() - start)
        return JSONResponse({"item_id": item_id, "strategy": found.strategy,
                             "items": found.items, "model_versions": found.model_versions})

    @app.get("/health", response_model=reco_openapi.Health, description=HEAD_TOO)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", response_model=reco_openapi.Readiness, responses=reco_openapi.NOT_READY,
             description=HEAD_TOO)
    async def ready() -> JSONResponse:
        checks = {"redis": await store.ping(), "snapshot": signals.can_serve}
        # With a snapshot (refreshed, or saved by an earlier process) every route answers,
        # from it while Redis is down (strategy fallback); a balancer reading 503 then would
        # drop every replica at once.
        ready = signals.can_serve
        return JSONResponse({"ready": ready, "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse,  # documented as text
             description=HEAD_TOO)
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    accept_head(app)
    return app


_tasks: set[asyncio.Task] = set()


def _background(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine without awaiting it, keeping a reference until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _query_of(*names: str) -> Any:
    """A route dependency refusing query strings `parse_query` refuses (unknown or repeated
    names, bytes that are not UTF-8), as the hot route does."""
    allowed = frozenset(names)

    async def check(request: Request) -> None:  # async: FastAPI runs a sync one in a thread
        parse_query(request.scope["query_string"], allowed)

    return Depends(check)


def serve(settings: Settings) -> None:
    security.configure_logging(settings)
    # forwarded_allow_ips: the per-IP rate limit reads the client address uvicorn resolved.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.reco_port,
                loop="uvloop", http="httptools", access_log=False, log_level="info",
                forwarded_allow_ips=settings.forwarded_allow_ips, **tls.uvicorn_options(settings))
