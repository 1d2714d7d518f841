"""Event ingest API (port 8080): events and user erasures to Kafka, catalogue writes to
PostgreSQL + Redis.

Routes only read the body, call the parsing and publishing functions and map their errors:
422 (loc, field, reason: serving/errors.py, as the recommendation API's), 413 (body over
settings.max_body_bytes, or an event over the broker's message size), 503 + Retry-After
(broker or database unavailable). 202 means the broker acknowledged every event of the
request; a refused publish (413, 503) names the request's event ids, since some of its events
may have been published: retries reuse them.
Run with `reco run ingest`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import orjson
import redis.asyncio as aredis
import redis.exceptions as redis_errors
import uvicorn
from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reco import heap
from reco.erasure import Erasure, progress
from reco.events import PATH_ID_SCHEMA, error_entry
from reco.privacy import pseudonym
from reco.settings import Settings
from serving import catalogue, cors, ingest_metrics, ingest_openapi, security, tls
from serving.errors import invalid_response, request_errors
from serving.hot_routes import HEAD_TOO, HotRoutes, RequestEndpoint, accept_head
from serving.http_metrics import HTTPMetrics
from serving.owed_mirrors import OwedMirrors
from serving.publisher import EventTooLarge, Publisher, PublishFailed
from serving.rate_limit import RateLimited
from serving.validation import (
    BodyTimeout,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    check_path_id,
    check_path_uuid,
    parse_event,
    parse_event_batch,
    parse_item,
    parse_item_batch,
    read_body,
    with_path_id,
)

log = logging.getLogger(__name__)
HOT_PATHS = ("/events", "/events/batch")  # POST only: the hot routes match method and path


class StoreUnavailable(Exception):
    """PostgreSQL or Redis did not answer (HTTP 503)."""


def json_response(content: Any, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


# Redis refusals that pass: a retry can succeed (a replica promoted, memory freed, a timeout).
_REDIS_TRANSIENT = (aredis.ConnectionError, aredis.TimeoutError, redis_errors.ReadOnlyError,
                    redis_errors.OutOfMemoryError, redis_errors.TryAgainError)


@asynccontextmanager
async def _stores_answering() -> AsyncIterator[None]:
    """PostgreSQL or Redis unreachable or refusing for now: StoreUnavailable (503, retry).
    PostgreSQL may have committed already: the retry writes the same rows and mirrors them."""
    try:
        yield
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError, TimeoutError, *_REDIS_TRANSIENT) as exc:
        raise StoreUnavailable(f"store unavailable: {exc!r}") from exc


class Catalogue:
    """PostgreSQL pool (opened on first use, so the API starts without it) and Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = aredis.Redis.from_url(settings.redis_url)
        self.owed = OwedMirrors(self.redis)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.settings.database_url, min_size=1, max_size=4, timeout=5,
                        command_timeout=self.settings.ingest_pg_timeout_s)
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    raise StoreUnavailable(f"PostgreSQL unavailable: {exc!r}") from exc
            return self._pool

    async def upsert(self, items: list[catalogue.ItemWithId]) -> list[str]:
        pool = await self.pool()
        async with _stores_answering():
            rows = await catalogue.store_items(pool, items)
            await self._mirror(rows)
        return [row[0] for row in rows]

    async def patch(self, item_id: str, patch: catalogue.ItemPatch) -> bool:
        pool = await self.pool()
        try:
            async with _stores_answering():
                row = await catalogue.store_patch(pool, item_id, patch)
                if row is None:
                    return False
                await self._mirror([row])
                return True
        except catalogue.AttributesRefused as exc:
            raise InvalidInput([error_entry(["attributes"], "attributes", str(exc))]) from None

    async def delete(self, item_id: str) -> bool:
        """Delete a stored item; False when there is none (or it was deleted before: its
        tombstone is mirrored again all the same, for a client retrying after a 503)."""
        pool = await self.pool()
        async with _stores_answering():
            found = await catalogue.store_delete(pool, item_id)
            if found is None:
                return False
            row, deleted_now = found
            await self._mirror([row])
            return deleted_now

    async def _mirror(self, rows: list[asyncpg.Record]) -> None:
        """Mirror stored rows into Redis; rows it refuses are owed (mirrored again in the
        background) before the 503: PostgreSQL holds them, retried or not."""
        try:
            await catalogue.mirror_items(self.redis, rows)
        except (OSError, *_REDIS_TRANSIENT):
            self.owed.owe(rows)
            raise

    async def check(self) -> bool:
        try:
            # Opening the pool counts too: its 5 s connect timeout, waited behind the lock by
            # each probe in turn, made readiness probes time out while PostgreSQL hung.
            async with asyncio.timeout(2.0):
                pool = await self.pool()
                await pool.fetchval("SELECT 1")
        except (StoreUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                TimeoutError):
            return False
        return True

    async def close(self) -> None:
        await self.owed.stop()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()


def create_app(settings: Settings) -> FastAPI:
    publisher = Publisher(settings)
    items = Catalogue(settings)
    limit = settings.max_body_bytes

    async def read(request: Request) -> bytes:
        return await read_body(request, limit, settings.body_read_timeout_s)

    context = {"max_future_skew_s": settings.max_future_skew_s,
               "max_context_bytes": settings.max_context_bytes}
    retry_after = {"Retry-After": str(settings.ingest_retry_after_s)}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        items.owed.start()
        heap.settle()
        try:
            yield
        finally:
            await publisher.stop()
            await items.close()

    app = FastAPI(title="reco ingest", lifespan=lifespan)
    app.state.publisher = publisher
    app.state.catalogue = items
    guard = security.IngestGuard.create(settings, app)  # API key, per-IP limit (issue 7)
    writes = guard.dependencies() if guard is not None else []

    def error_response(exc: Exception) -> Response | None:
        """The answer to a refused request (None: not a refusal, a server error)."""
        if isinstance(exc, InvalidInput):
            ingest_metrics.count_rejected(422)
            return invalid_response(exc.errors)
        if isinstance(exc, RequestValidationError):  # FastAPI's own, in the same shape
            ingest_metrics.count_rejected(422)
            return invalid_response(request_errors(exc.errors()))
        if isinstance(exc, PayloadTooLarge):
            ingest_metrics.count_rejected(413)
            return json_response({"detail": str(exc)}, 413)
        if isinstance(exc, UnsupportedMediaType):
            ingest_metrics.count_rejected(415)
            return json_response({"detail": str(exc)}, 415)
        if isinstance(exc, BodyTimeout):
            ingest_metrics.count_rejected(408)
            return json_response({"detail": str(exc)}, 408, {"Connection": "close"})
        if isinstance(exc, PublishFailed):
            return publish_failed(exc)
        if isinstance(exc, StoreUnavailable):
            ingest_metrics.count_rejected(503)
            return json_response({"detail": str(exc)}, 503, retry_after)
        if isinstance(exc, security.AuthError):
            return security.auth_response(exc)
        if isinstance(exc, RateLimited):
            return security.limited_response(exc)
        return None

    def publish_failed(exc: PublishFailed) -> Response:
        """503 (retry) or 413 (do not), naming the ids the request's events were sent with."""
        if isinstance(exc, EventTooLarge):
            ingest_metrics.count_rejected(413)
            detail = f"{exc}; the events before it may have been published with these event_ids"
            return json_response({"detail": detail, "event_ids": exc.event_ids}, 413)
        ingest_metrics.count_rejected(503)
        ingest_metrics.PUBLISH_FAILURES.inc()
        detail = (f"{exc}; some events may have been published: retry with these event_ids "
                  "so that none is counted twice")
        return json_response({"detail": detail, "event_ids": exc.event_ids}, 503, retry_after)

    async def _refused(_: Request, exc: Exception) -> Response:
        return error_response(exc)  # type: ignore[return-value]

    for refusal in (InvalidInput, RequestValidationError, PayloadTooLarge,
                    UnsupportedMediaType, BodyTimeout, PublishFailed, StoreUnavailable):
        app.add_exception_handler(refusal, _refused)

    async def post_event(request: Request) -> Response:
        event = parse_event(await read(request), context)
        await publisher.publish((event,))
        ingest_metrics.count_published((event,))
        return json_response({"event_id": str(event.event_id)}, 202)

    async def post_events(request: Request) -> Response:
        events = parse_event_batch(await read(request), context,
                                   settings.max_batch_events)
        await publisher.publish(events)
        ingest_metrics.count_published(events)
        return json_response({"event_ids": [str(e.event_id) for e in events]}, 202)

    # Documented and reachable as FastAPI routes; served by the hot routes below.
    app.post("/events", status_code=202, dependencies=writes,
             **ingest_openapi.EVENT)(post_event)
    app.post("/events/batch", status_code=202, dependencies=writes,
             **ingest_openapi.EVENT_BATCH)(post_events)

    @app.put("/items/{item_id:path}", dependencies=writes, **ingest_openapi.ITEM)
    async def put_item(item_id: Annotated[str, Path(json_schema_extra=PATH_ID_SCHEMA)],
                       request: Request) -> Response:
        item = parse_item(await read(request), catalogue.ItemIn, context)
        full = with_path_id(item_id, item)
        await items.upsert([full])
        ingest_metrics.ITEMS_UPSERTED.inc()
        return json_response({"item_id": item_id})

    @app.patch("/items/{item_id:path}", dependencies=writes,
               description=catalogue.ItemPatch.__doc__, **ingest_openapi.ITEM_PATCH)
    async def patch_item(item_id: Annotated[str, Path(json_schema_extra=PATH_ID_SCHEMA)],
                         request: Request) -> Response:
        patch = parse_item(await read(request), catalogue.ItemPatch, context)
        if not await items.patch(check_path_id(item_id), patch):
            return json_response({"detail": f"no item {item_id!r}: PUT /items/{{item_id}} "
                                            "creates one"}, 404)
        ingest_metrics.ITEMS_UPSERTED.inc()
        return json_response({"item_id": item_id})

    @app.delete("/items/{item_id:path}", dependencies=writes, **ingest_openapi.ITEM_DELETE)
    async def delete_item(item_id: Annotated[str, Path(json_schema_extra=PATH_ID_SCHEMA)]
                          ) -> Response:
        if not await items.delete(check_path_id(item_id)):
            return json_response({"detail": f"no item {item_id!r} (or deleted already)"}, 404)
        ingest_metrics.ITEMS_DELETED.inc()
        return json_response({"item_id": item_id})

    @app.post("/items/batch", dependencies=writes, **ingest_openapi.ITEM_BATCH)
    async def post_items(request: Request) -> Response:
        batch = parse_item_batch(await read(request), context)
        ids = await items.upsert(batch.items)
        ingest_metrics.ITEMS_UPSERTED.inc(len(ids))
        return json_response({"item_ids": [it.item_id for it in batch.items]})

    @app.delete("/users/{user_id:path}", status_code=202, dependencies=writes,
                **ingest_openapi.USER_ERASURE)
    async def erase_user(user_id: Annotated[str, Path(json_schema_extra=PATH_ID_SCHEMA)]
                         ) -> Response:
        erasure = Erasure.of(check_path_id(user_id, "user_id"))
        try:
            await publisher.publish((erasure,))
        except PublishFailed as exc:
            ingest_metrics.count_rejected(503)
            return json_response({"detail": f"{exc}; retry: erasing again is harmless"}, 503,
                                 retry_after)
        ingest_metrics.USER_ERASURES.inc()
        log.info("erasure %s of %s queued", erasure.erasure_id, pseudonym(erasure.user_id))
        return json_response({"user_id": user_id, "erasure_id": erasure.erasure_id}, 202)

    @app.get("/erasures/{erasure_id}", dependencies=writes, **ingest_openapi.ERASURE_PROGRESS)
    async def get_erasure(erasure_id: Annotated[str, Path(json_schema_extra={"format": "uuid"})]
                          ) -> Response:
        erasure_id = check_path_uuid(erasure_id, "erasure_id")
        pool = await items.pool()
        async with _stores_answering():
            found = await progress(pool, items.redis, erasure_id)
        return json_response(found.as_json())

    @app.get("/health", **ingest_openapi.HEALTH)
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready", **ingest_openapi.READY)
    async def ready() -> Response:
        (broker, topic), database = await asyncio.gather(publisher.check(), items.check())
        # Events need only the broker and their topic: with PostgreSQL down they are still
        # acknowledged (the archiver catches up), and a balancer reading 503 would drop every
        # replica at once.
        ok = broker and topic
        return json_response({"broker": broker, "topic": topic, "database": database},
                             200 if ok else 503, None if ok else retry_after)

    @app.get("/metrics", response_class=PlainTextResponse,  # documented as text
             description=HEAD_TOO)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    accept_head(app)
    # The event POSTs skip the framework (serving/hot_routes.py). In paired runs (3 rounds)
    # the ingest took 0.41-0.58 core at 1,000 single-event POSTs/s instead of 0.57-0.61, and
    # 0.58-0.74 instead of 0.80-0.89 at 2,000/s; its max rate rose by ~30%.
    check = None if guard is None else (
        lambda request: guard.check(request, request.headers.get(security.API_KEY_HEADER)))
    app.add_middleware(HotRoutes, routes={
        ("POST", route.path): (RequestEndpoint(route.endpoint, error_response, check), route)
        for route in app.routes if isinstance(route, APIRoute) and route.path in HOT_PATHS})
    cors.allow_cross_origin(app, settings, ("GET", "POST", "PUT", "PATCH", "DELETE"),
                            ("Content-Type", security.API_KEY_HEADER))
    app.add_middleware(HTTPMetrics)  # added last: outermost, so it times the hot routes too
    return app


def serve(settings: Settings) -> None:
    """Entry point of `reco run ingest`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    security.configure_logging(settings)
    # forwarded_allow_ips: the per-IP rate limit reads the client address uvicorn resolved.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.ingest_port,
                access_log=False, log_level="warning",
                forwarded_allow_ips=settings.forwarded_allow_ips, **tls.uvicorn_options(settings))
