"""OpenAPI documentation of the recommendation API's hand-validated /recommendations route.

The route is a plain Starlette route (see serving/reco_params.py), invisible to FastAPI's
schema generation; this documents it with the parameters `parse_reco_params` enforces, so
clients and the schemathesis fuzz tests see it. The 422 body is the one both APIs send
(`{"detail": [{"loc", "field", "reason"}]}`, serving/errors.py), not FastAPI's default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from serving.errors import INVALID_SCHEMA
from serving.hot_routes import HEAD_TOO
from serving.reco_params import ID_PATTERN, MAX_K

Strategy = Literal["personalized", "popular", "fallback"]
SimilarStrategy = Literal["similar", "fallback"]
_VERSIONS = ("The published model versions (by model: item2vec, als, sasrec) whose lists "
             "this answer was ranked with; empty for popular and fallback answers")
_SIMILAR_VERSIONS = ("The Item2Vec version whose neighbour list was read ({} when none is "
                     "published, and for fallback answers)")


class Signals(BaseModel):
    """Each signal's share of the score: weight x the signal normalised over this request's
    candidates (0-1), plus the freshness boost; they add up to the score."""

    coview: float = Field(description="items viewed together with the user's recent items")
    embedding: float = Field(description="Item2Vec neighbours of the user's recent items")
    popularity: float = Field(description="time-decayed popularity")
    recency: float = Field(description="how recently the user touched the item leading to it")
    cf: float = Field(description="ALS collaborative filtering (item-item and the user's list)")
    seq: float = Field(description="SASRec's next-item prediction for the user")
    freshness: float = Field(description="boost of an item created within the freshness window")


class Reasons(BaseModel):
    signals: Signals
    source_item: str | None = Field(description="the recent item that led to it most, if any")
    because: str = Field(description="a short human-readable reason")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description=(
        "Blend of the signals, each normalised over this request's candidates: compare scores "
        "within one answer only. At most the sum of the weights x (1 + the freshness boost); "
        "popular and fallback answers score by popularity alone (at most its weight)"))
    reasons: Reasons | None = Field(default=None, description="only with explain=true")


class Recommendations(BaseModel):
    user_id: str
    strategy: Strategy = Field(description=(
        "personalized: at least one item came from the user's history (recent items, model "
        "lists); popular: only popular items and catalogue filler (no history, or filters "
        "that left none of it); fallback: the feature store was unreachable, popular items "
        "from the API's in-process snapshot"))
    items: list[RecommendedItem] = Field(description="best first, at most k")
    model_versions: dict[str, str] = Field(description=_VERSIONS)
    cached: bool = Field(description=(
        "true when served from the response cache (same user, same parameters, no event of "
        "the user and no model switch since)"))


class PopularItem(BaseModel):
    item_id: str
    score: float = Field(description=(
        "time-decayed popularity relative to the most popular item overall (1.0), whatever "
        "the category filter"))


class Popular(BaseModel):
    category: str | None = Field(description="the category asked for, or null")
    items: list[PopularItem] = Field(description=(
        "most popular first, in stock, at most k; then, if fewer are popular, catalogue items "
        "nobody interacted with yet, newest first, at score 0"))


class SimilarItem(BaseModel):
    item_id: str
    score: float = Field(description=(
        "strategy similar: co-view and Item2Vec similarity blended with their weights, each "
        "normalised over this answer (compare within one answer); fallback: popularity "
        "relative to the most popular item (1.0)"))


class Similar(BaseModel):
    item_id: str
    strategy: SimilarStrategy = Field(description=(
        "similar: from the item's co-view and Item2Vec lists (empty when the item has none, "
        "an unknown item included); fallback: the feature store was unreachable, popular "
        "items"))
    items: list[SimilarItem] = Field(description="most similar first, in stock, at most k")
    model_versions: dict[str, str] = Field(description=_SIMILAR_VERSIONS)


class Health(BaseModel):
    status: Literal["ok"]


class ReadyChecks(BaseModel):
    redis: bool = Field(description="the feature store answers")
    snapshot: bool = Field(description=(
        "the in-process catalogue and popularity are loaded, or at a start without Redis "
        "the popular items an earlier process saved"))


class Readiness(BaseModel):
    ready: bool
    checks: ReadyChecks


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_DETAIL = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: _json(_DETAIL, "Missing, expired or invalid token (when auth is enabled)"),
    403: _json(_DETAIL, "The token's subject is not the user asked about"),
    422: _json(INVALID_SCHEMA, "Invalid parameters: each error names the field and the "
                               "reason"),
    429: _json(_DETAIL, "Over the per-user rate limit; see Retry-After"),
}
# Routes without a user (/popular, /similar): any valid token, so no 403; the rate limit
# counts per token subject, or per client IP without auth.
UNPERSONAL_ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: answer for status, answer in ERRORS.items() if status != 403},
    429: _json(_DETAIL, "Over the rate limit (per token subject, or per client IP without "
                        "auth); see Retry-After"),
}
NOT_READY = {503: {"model": Readiness, "description": (
    "Not ready: no snapshot of popular items and the catalogue loaded yet (Redis has not "
    "answered since the start). Once loaded, /ready stays 200 while Redis is down, with "
    "checks.redis false: the routes answer from the snapshot (strategy fallback)")}}
POPULAR_DOC = ("The most popular items in stock (time-decayed weighted event counts), "
               "optionally of one category (case-sensitive), filled up to k with the newest "
               "catalogue items nobody interacted with yet. " + HEAD_TOO)
SIMILAR_DOC = ("Items similar to one item, from its co-view and Item2Vec lists, in stock, "
               "not the item itself. An item without lists (one nobody viewed with another, "
               "or an unknown id) gets 200 with no items. " + HEAD_TOO)
# Clients remove "." and ".." path segments: such an id names no route (reco.events).
UNADDRESSABLE_ID = {404: _json(_DETAIL, "No route: an id '.' or '..' written as such, a "
                                        "segment clients remove; send it as %2E or %2E%2E "
                                        "(browsers remove those too)")}


RECOMMENDATIONS_DOC = (
    "Personalised top-k for one user, best first, after the business rules (in stock, "
    "category and price filters, at most a share of k from one category, seen items "
    "excluded). A user without history gets popular items (strategy popular). Categories "
    "match exactly, case-sensitively. " + HEAD_TOO)
_ID_DOC = ("1-128 printable ASCII characters ('!' to '~') without spaces; percent-encode "
           "reserved characters, '+' as %2B")


async def _recommendations(
    user_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN,
                                  description=_ID_DOC)],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="at most this many items")] = 20,
    exclude_seen: Annotated[bool, Query(description="leave out items the user touched")] = True,
    category: Annotated[str | None, Query(min_length=1, max_length=128,
                                          description="only this category (case-sensitive)")
                        ] = None,
    min_price: Annotated[float | None, Query(ge=0, description="must not exceed max_price")] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
    explain: Annotated[bool, Query(description="add each item's reasons")] = False,
) -> Recommendations:
    raise NotImplementedError  # documents the hand-validated route (serving/reco_route.py)


def document(app: FastAPI, dependencies: list[Any]) -> None:
    """Make `app.openapi()` include GET /recommendations as it is served."""
    route = APIRoute("/recommendations", _recommendations, methods=["GET"],
                     response_model=Recommendations, responses=ERRORS,
                     dependencies=dependencies, name="recommendations",
                     summary="Recommendations", description=RECOMMENDATIONS_DOC)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(title=app.title, version=app.version,
                                             routes=[route, *app.routes])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
