"""Hot endpoints as plain ASGI apps, dispatched ahead of the framework's routing.

Through FastAPI a request also passes the exception middleware, the exit-stack middleware, the
router's match over every route, dependency resolution and the request/response wrappers:
about a third of a cached recommendation's CPU time in a py-spy profile here, and a quarter of
a single-event POST's at full load (serving/ingest.py). `HotRoutes` hands the listed
(method, path) pairs straight to their endpoints. The HTTP metrics middleware stays outside
it, so those requests are counted and timed as before; everything else goes through the
framework, where each hot endpoint is also registered as an ordinary route (405s, HEAD, the
OpenAPI document).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send


class HotRoutes:
    """ASGI middleware: `routes[(method, path)]` = (endpoint, the route its metrics are
    labelled with); any other request goes to the app."""

    def __init__(self, app: ASGIApp,
                 routes: Mapping[tuple[str, str], tuple[ASGIApp, BaseRoute]]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" \
            else None
        if hot is None:
            await self.app(scope, receive, send)
            return
        endpoint, scope["route"] = hot  # the route label of the HTTP metrics
        await endpoint(scope, receive, send)


class RequestEndpoint:
    """A plain ASGI endpoint around `handler(request) -> Response`, for `HotRoutes`.

    `guard(request)` runs first when given; an exception that `on_error` answers (returns a
    response for, as the app's exception handlers would) becomes that response, any other
    propagates to the server error middleware as it would from a framework route.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]],
                 on_error: Callable[[Exception], Response | None],
                 guard: Callable[[Request], Awaitable[None]] | None = None) -> None:
        self.handler = handler
        self.on_error = on_error
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            if self.guard is not None:
                await self.guard(request)
            response = await self.handler(request)
        except Exception as exc:
            answer = self.on_error(exc)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)


HEAD_TOO = "HEAD is accepted too."


def accept_head(app: FastAPI) -> None:
    """Answer HEAD on every GET route of `app` as its GET (the server sends no body):
    uptime monitors probe with HEAD, and FastAPI's GET routes, unlike Starlette's, refuse it
    (405). Left out of the OpenAPI document, where each would repeat its GET's operation id."""
    for route in list(app.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"}:
            app.router.add_api_route(
                route.path, route.endpoint, methods=["HEAD"], include_in_schema=False,
                dependencies=route.dependencies, response_class=route.response_class,
                name=route.name)
