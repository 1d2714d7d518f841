"""OpenAPI documentation of the ingest routes, which read their bodies by hand.

The routes parse raw bytes (size limit first, then pydantic), so FastAPI cannot infer their
request bodies; these are spelled out from the same models, so clients and the schemathesis
fuzz tests (tests/security/test_fuzz.py) see what is accepted and what comes back.
"""

from __future__ import annotations

from typing import Any

from reco.events import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, Event
from serving.catalogue import ItemBatch, ItemIn, ItemPatch
from serving.errors import INVALID_SCHEMA
from serving.hot_routes import HEAD_TOO


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve pydantic's local `#/$defs/...` references (OpenAPI keeps its own components)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _event_schema() -> dict[str, Any]:
    schema = _inline(Event.model_json_schema())
    # The validator also takes RFC 3339 text; the generated schema only knows the stored int.
    schema["properties"]["timestamp"] = {
        "anyOf": [{"type": "integer", "minimum": MIN_TIMESTAMP_MS,
                   "maximum": MAX_TIMESTAMP_MS},
                  {"type": "string", "format": "date-time"}],
        "description": "RFC 3339 date-time with an offset, or epoch milliseconds; default now; "
                       "as a number from 1973-03-03 on (so that epoch seconds are refused); at "
                       "most 5 minutes ahead",
    }
    return schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_DETAIL = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
_COMMON = {
    401: _json(_DETAIL, "Missing or invalid API key (when auth is enabled)"),
    413: _json(_DETAIL, "Body over the size limit"),
    415: _json(_DETAIL, "Body compressed, or of a Content-Type other than JSON"),
    422: _json(INVALID_SCHEMA, "Invalid input: each error names the field and the reason "
                               "(and, in a batch, the event's or item's index)"),
    429: _json(_DETAIL, "Over the per-client rate limit; see Retry-After"),
    503: _json(_DETAIL, "Broker or database unavailable; retry after Retry-After"),
}
_ID = {"type": "string"}
_EVENT_IDS = {"type": "array", "items": {"type": "string", "format": "uuid"}}
# A refused publish names every event id of the request (some events may have been published).
_PUBLISH_FAILED = {
    413: _json({**_DETAIL, "properties": {**_DETAIL["properties"], "event_ids": _EVENT_IDS}},
               "Body over the size limit; or an event over the broker's message size, with the "
               "request's event_ids (the events before it may have been published)"),
    503: _json({"type": "object", "required": ["detail", "event_ids"],
                "properties": {"detail": {"type": "string"}, "event_ids": _EVENT_IDS}},
               "Broker unavailable; retry after Retry-After with the same event_ids, so that "
               "events already published are not counted twice"),
}


def _route(body: dict[str, Any], status: int, answer: dict[str, Any],
           errors: dict[int, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": {
            "application/json": {"schema": body}}}},
        "responses": {status: _json(answer, "Accepted" if status == 202 else "Stored"),
                      **_COMMON, **(errors or {})},
    }


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_event = _event_schema()
EVENT = _route(_event, 202, _object(event_id={"type": "string", "format": "uuid"}),
               _PUBLISH_FAILED)
EVENT_BATCH = _route(
    {"type": "object", "required": ["events"], "additionalProperties": False,
     "properties": {"events": {"type": "array", "items": _event, "minItems": 1,
                               "maxItems": 1000}}},
    202, _object(event_ids=_EVENT_IDS), _PUBLISH_FAILED)
# Clients remove "." and ".." path segments: such an id names no route (reco.events).
ITEM = _route(_inline(ItemIn.model_json_schema()), 200, _object(item_id=_ID),
              {404: _json(_DETAIL, "No route: an id '.' or '..' written as such, a segment "
                                   "clients remove; send it as %2E or %2E%2E (browsers remove "
                                   "those too), or through POST /items/batch")})
ITEM_PATCH = _route(
    _inline(ItemPatch.model_json_schema()), 200, _object(item_id=_ID),
    {404: _json(_DETAIL, "No such item (PUT creates items), or the id '.' or '..' written "
                         "as such")})
# No body; the id is checked as PUT's.
ITEM_DELETE = {"responses": {
    200: _json(_object(item_id=_ID), "Deleted: no longer recommended once the recommendation "
                                     "API's catalogue refreshed; a later PUT creates it again"),
    404: _json(_DETAIL, "No such item, or deleted already (or the id '.' or '..' written as "
                        "such)"),
    **{status: _COMMON[status] for status in (401, 422, 429)},
    503: _json(_DETAIL, "Database unavailable; retry after Retry-After")}}
ITEM_BATCH = _route(_inline(ItemBatch.model_json_schema()), 200,
                    _object(item_ids={"type": "array", "items": _ID}))

USER_ERASURE = {
    "description": "Erase what is stored about a user: their events in PostgreSQL, their "
                   "`users` row and their features in Redis (recent items, seen items, "
                   "ALS and SASRec lists). The erasure is queued behind the user's events "
                   "already sent, so none of those escapes it; events sent after it are kept. "
                   "202 means the broker holds the request; `user_erasures` records it once "
                   "PostgreSQL's part is done. Repeating it is harmless.",
    "responses": {
        202: _json(_object(user_id=_ID, erasure_id={"type": "string", "format": "uuid"}),
                   "Accepted: the erasure is queued"),
        **{status: answer for status, answer in _COMMON.items() if status not in (413, 415)},
        404: _json(_DETAIL, "No route: the id '.' or '..' written as such, a segment clients "
                            "remove; send it as %2E or %2E%2E"),
        503: _json(_DETAIL, "Broker unavailable; retry after Retry-After (repeating an "
                            "erasure is harmless)"),
    },
}

_NULLABLE = {"type": ["string", "null"], "format": "date-time"}
ERASURE_PROGRESS = {
    "description": "How far an erasure (the `erasure_id` DELETE /users/{id} answered) got: "
                   "`features_erased` once the stream processor deleted the user's features "
                   "from Redis, `archive_erased` once the archiver deleted the user's events "
                   "from PostgreSQL (with when, and how many); `status` is `done` when both "
                   "are. An id never issued reads as `pending`, as one still in flight does.",
    "responses": {
        200: _json(_object(erasure_id={"type": "string", "format": "uuid"},
                           status={"enum": ["pending", "done"]},
                           features_erased={"type": "boolean"},
                           archive_erased={"type": "boolean"},
                           erased_at=_NULLABLE,
                           events_deleted={"type": ["integer", "null"]}),
                   "The erasure's progress"),
        **{status: _COMMON[status] for status in (401, 422, 429)},
        503: _json(_DETAIL, "PostgreSQL or Redis unavailable; retry after Retry-After")},
}

HEALTH = {"responses": {200: _json(_object(status={"enum": ["ok"]}), "The process answers")},
          "description": HEAD_TOO}
_READINESS = _object(broker={"type": "boolean", "description": "the Kafka broker answers"},
                     topic={"type": "boolean", "description": "the events topic exists, with "
                            "a partition leader"},
                     database={"type": "boolean", "description": "PostgreSQL answers"})
READY = {"responses": {
    200: _json(_READINESS, "Ready: the broker answers and the events topic is there, so events "
                           "are acknowledged; with database false, catalogue writes answer 503 "
                           "meanwhile"),
    503: {**_json(_READINESS, "Not ready: the broker does not answer, or the events topic is "
                              "missing or has no partition leader; retry after Retry-After"),
          "headers": {"Retry-After": {"schema": {"type": "integer"},
                                      "description": "seconds"}}}},
    "description": HEAD_TOO}
