"""GET /recommendations as a plain ASGI endpoint, the API's hot path (serving/hot_routes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from reco.settings import Settings
from serving import reco_metrics as metrics
from serving.errors import invalid_response
from serving.reco_params import RECO_PARAMS, ParamErrors, parse_query, parse_reco_params
from serving.reco_service import RecoService
from serving.reco_store import FeatureStore

PATH = "/recommendations"
FLUSH_AFTER_S = 0.02
_JSON_HEADERS = [(b"content-type", b"application/json")]


class RecommendationsEndpoint:
    """GET /recommendations?user_id&k&exclude_seen&category&min_price&max_price&explain"""

    def __init__(self, settings: Settings, service: RecoService, store: FeatureStore,
                 guard: Any, flush: Callable[[], None]) -> None:
        self.ttl_s = settings.cache_ttl_s
        self.service = service
        self.store = store
        self.guard = guard  # serving.security.RecoGuard or None (auth and limits off)
        self.flush = flush
        self.latency = metrics.LATENCY.labels(endpoint="recommendations")
        self._served: dict[str, Any] = {}  # strategy -> counter child (labels() is slow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        guard = self.guard
        if guard is not None:
            request = Request(scope, receive)
            subject, denied = await guard.authenticate(request)
            if denied is not None:
                await denied(scope, receive, send)
                return
        try:
            p = parse_reco_params(parse_query(scope["query_string"], RECO_PARAMS))
        except ParamErrors as exc:
            await invalid_response(exc.detail)(scope, receive, send)
            return
        if guard is not None and (
                denied := await guard.authorize(request, subject, p.user_id)):
            await denied(scope, receive, send)
            return
        answer = await self.service.recommend(p)
        if answer.cache_entry is not None and self.store.queue_cache_write(
                p.user_id, p.variant, answer.cache_entry,
                None if answer.keep_ttl else self.ttl_s):
            # Normally the next request's pipeline carries the write; flush soon if none comes.
            asyncio.get_running_loop().call_later(FLUSH_AFTER_S, self.flush)
        counter = self._served.get(answer.strategy)
        if counter is None:
            counter = self._served[answer.strategy] = metrics.REQUESTS.labels(
                endpoint="recommendations", strategy=answer.strategy)
        counter.inc()
        self.latency.observe(time.perf_counter() - start)
        body = answer.body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": body})
