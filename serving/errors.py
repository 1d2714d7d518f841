"""The 422 body of both APIs: one entry shape, one rendering function, one OpenAPI schema.

`{"detail": [entry, ...]}`, each entry `{"loc", "field", "reason"}` (reco.events.ErrorEntry)
plus `"index"` in a batch's entries (POST /events/batch, /items/batch): the position of the
event or item. `loc` says where the value was (["query", "k"], ["path", "item_id"], a body's
path such as ["events", 3, "user_id"] or ["price"]); `field` is the name clients read since
before `loc` existed on the recommendation API: `loc` without list positions and, for query
parameters, without "query" ("k", "path.item_id", "events.user_id").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import Response

from reco.events import ErrorEntry, error_entry, error_reason

_ENTRY_SCHEMA = {
    "type": "object", "required": ["loc", "field", "reason"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": "where the value was: [\"query\", \"k\"], [\"path\", "
                               "\"item_id\"], or its path in the body ([\"events\", 3, "
                               "\"user_id\"])"},
        "field": {"type": "string", "description": (
            "loc as a dotted name, without list positions and without \"query\": \"k\", "
            "\"path.item_id\", \"events.user_id\"")},
        "reason": {"type": "string"},
        "index": {"type": "integer", "description": (
            "the event's or item's position in a batch; only in a batch's entries")},
    },
}
INVALID_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "array", "items": _ENTRY_SCHEMA}},
}


def invalid_response(entries: Sequence[ErrorEntry]) -> Response:
    """The 422 answer of either API."""
    return Response(orjson.dumps({"detail": entries}), 422, media_type="application/json")


def query_error(name: str, reason: str) -> ErrorEntry:
    """An entry about the query parameter `name` (the hand-validated routes')."""
    return error_entry(["query", name], name, reason)


def request_errors(errors: Iterable[Mapping[str, Any]]) -> list[ErrorEntry]:
    """Entries of FastAPI's own parameter validation (RequestValidationError.errors())."""
    return [error_entry(list(e["loc"]), _request_field(e["loc"]), error_reason(e))
            for e in errors]


def _request_field(loc: Sequence[str | int]) -> str:
    """Query parameters by name, path ones as `path.item_id`, as the ingest API names them."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    if names[:1] == ["query"]:
        names = names[1:]
    return ".".join(names) or "request"


def with_batch_index(entries: list[ErrorEntry]) -> list[ErrorEntry]:
    """Give each entry about one element of a batch (loc [batch, i, ...]) its `index` i."""
    for entry in entries:
        loc = entry["loc"]
        if len(loc) > 1 and isinstance(loc[1], int):
            entry["index"] = loc[1]
    return entries
