"""OpenAPI documentation of the recommendation API's hand-validated /recommendations route.

The route is a plain Starlette route (see serving/reco_params.py), invisible to FastAPI's
schema generation; this documents it with the parameters `parse_reco_params` enforces, so
clients and the schemathesis fuzz tests see it. The error shapes are the API's own
(`{"detail": [{"field", "reason"}]}`), not FastAPI's default validation error.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from serving.reco_params import ID_PATTERN, MAX_K


class Reasons(BaseModel):
    signals: dict[str, float]
    source_item: str | None
    because: str


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reasons: Reasons | None = None  # only with explain=true


class Recommendations(BaseModel):
    user_id: str
    strategy: str
    items: list[RecommendedItem]
    model_versions: dict[str, str]
    cached: bool


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_DETAIL = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
_ERRORS = {"type": "object", "required": ["detail"], "properties": {"detail": {
    "type": "array", "items": {"type": "object", "required": ["field", "reason"],
                               "properties": {"field": {"type": "string"},
                                              "reason": {"type": "string"}}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: _json(_DETAIL, "Missing, expired or invalid token (when auth is enabled)"),
    403: _json(_DETAIL, "The token's subject is not the user asked about"),
    422: _json(_ERRORS, "Invalid parameters: each error names the field and the reason"),
    429: _json(_DETAIL, "Over the per-user rate limit; see Retry-After"),
}
# Clients remove "." and ".." path segments: such an id names no route (reco.events).
UNADDRESSABLE_ID = {404: _json(_DETAIL, "No route: the ids '.' and '..' cannot be given in a "
                                        "path")}


async def _recommendations(
    user_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
    exclude_seen: bool = True,
    category: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    min_price: Annotated[float | None, Query(ge=0)] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
    explain: bool = False,
) -> Recommendations:
    """Personalised top-k for one user (documentation only: the hand-validated route serves)."""
    raise NotImplementedError


def document(app: FastAPI, dependencies: list[Any]) -> None:
    """Make `app.openapi()` include GET /recommendations as it is served."""
    route = APIRoute("/recommendations", _recommendations, methods=["GET"],
                     response_model=Recommendations, responses=ERRORS,
                     dependencies=dependencies, name="recommendations",
                     summary="Recommendations")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version,
                                             routes=[route, *app.routes])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
