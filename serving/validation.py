"""Request parsing for the ingest API: size limit, JSON, schema; errors name field and reason."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

import orjson
import pydantic_core
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from reco.events import (
    CANONICAL_UUID_RE,
    ErrorEntry,
    Event,
    Identifier,
    describe_errors,
    error_entry,
)
from serving.catalogue import ItemBatch, ItemIn, ItemWithId
from serving.errors import with_batch_index

EVENT_LIST = TypeAdapter(list[Event])
ITEM_ID = TypeAdapter(Identifier)
ItemT = TypeVar("ItemT", bound=ItemIn)


class InvalidInput(Exception):
    """HTTP 422: `errors` as serving/errors.py renders them (+ index for batches)."""

    def __init__(self, errors: list[ErrorEntry]) -> None:
        super().__init__(errors)
        self.errors = errors


class PayloadTooLarge(Exception):
    """HTTP 413."""


class UnsupportedMediaType(Exception):
    """HTTP 415."""


class BodyTimeout(Exception):
    """HTTP 408."""


# navigator.sendBeacon() sends a string body as text/plain: JSON in it is taken as such.
_JSON_MEDIA_TYPES = ("application/json", "text/plain")


def check_media_type(request: Request) -> None:
    """Refuse bodies that are not plain JSON by their headers, rather than as invalid JSON."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media and media not in _JSON_MEDIA_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not supported: the body is JSON (application/json)")


def repeated_indexes(values: Iterable[Hashable]) -> list[int]:
    """Indexes of values that already appeared earlier in the sequence."""
    seen: set[Hashable] = set()
    repeats = []
    for i, value in enumerate(values):
        if value in seen:
            repeats.append(i)
        seen.add(value)
    return repeats


def _refuse_duplicates(batch: str, name: str, values: Iterable[Hashable]) -> None:
    """Refuse a batch naming one object twice: downstream keeps one copy per id, so the other
    would be acknowledged and then dropped."""
    repeats = repeated_indexes(values)
    if repeats:
        raise InvalidInput(with_batch_index([
            _error(f"{batch}.{name}", f"duplicate {name} in batch", [batch, i, name])
            for i in repeats]))


def _error(field: str, reason: str, loc: list[str | int] | None = None) -> ErrorEntry:
    return error_entry(loc if loc is not None else [field], field, reason)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing anything over `limit` bytes before reading all of it, anything its
    headers say is not plain JSON, and a body not all there within `timeout_s`."""
    check_media_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit} byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over the {limit} byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"body not received within {timeout_s:g} s "
                          f"(RECO_BODY_READ_TIMEOUT_S); {size} bytes came") from None
    return b"".join(chunks)


def parse_event(body: bytes, context: dict[str, Any]) -> Event:
    try:
        return Event.model_validate_json(body, context=context)
    except ValidationError as exc:
        raise InvalidInput(describe_errors(exc)) from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers it cannot hold (1e400, integers past 64 bits) that the
        # single-event route parses with pydantic and rejects naming the field: parse them the
        # same way here, so that the error names the event and field too.
        try:
            data = pydantic_core.from_json(body)
        except ValueError:
            raise InvalidInput([_error("body", f"malformed JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise InvalidInput([_error("body", "must be a JSON object")])
    return data


def parse_event_batch(body: bytes, context: dict[str, Any], max_events: int) -> list[Event]:
    """`{"events": [...]}`, validated as a whole: every bad index is reported, none is kept."""
    data = _json_object(body)
    unknown = sorted(set(data) - {"events"})
    if unknown:
        raise InvalidInput([_error(k, "unknown field") for k in unknown])
    raw = data.get("events")
    if not isinstance(raw, list):
        raise InvalidInput([_error("events", "required: a list of events")])
    if not 1 <= len(raw) <= max_events:
        reason = f"must hold 1 to {max_events} events, got {len(raw)}"
        raise InvalidInput([_error("events", reason)])
    try:
        events = EVENT_LIST.validate_python(raw, context=context)
    except ValidationError as exc:
        raise InvalidInput(with_batch_index(describe_errors(exc, prefix=("events",)))) from None
    _refuse_duplicates("events", "event_id", (e.event_id for e in events))
    return events


def parse_item(body: bytes, kind: type[ItemT], context: dict | None = None) -> ItemT:
    """One item's fields: `ItemIn` (PUT, the whole item) or `ItemPatch` (PATCH); `context`:
    the events' validation context (`max_future_skew_s`)."""
    try:
        return kind.model_validate_json(body, context=context)
    except ValidationError as exc:
        raise InvalidInput(describe_errors(exc)) from None


def parse_item_batch(body: bytes, context: dict | None = None) -> ItemBatch:
    try:
        batch = ItemBatch.model_validate_json(body, context=context)
    except ValidationError as exc:
        raise InvalidInput(with_batch_index(describe_errors(exc))) from None
    _refuse_duplicates("items", "item_id", (item.item_id for item in batch.items))
    return batch


def check_path_id(item_id: str, name: str = "item_id") -> str:
    """A path's id (`name`), refused as PUT refuses an item id (a PATCH would only find no
    such item)."""
    try:
        return ITEM_ID.validate_python(item_id)
    except ValidationError as exc:
        raise InvalidInput(describe_errors(exc, prefix=("path", name))) from None


def check_path_uuid(value: str, name: str) -> str:
    """A path's UUID (`name`) as the API writes them (8-4-4-4-12 hex digits), upper case
    taken: `uuid.UUID` also takes forms ("0x...", other scripts' digits) that read as
    another id."""
    lowered = value.lower()
    if not CANONICAL_UUID_RE.fullmatch(lowered):
        raise InvalidInput([error_entry(["path", name], f"path.{name}",
                                        "must be a UUID (8-4-4-4-12 hexadecimal digits)")])
    return lowered


def with_path_id(item_id: str, item: ItemIn) -> ItemWithId:
    """Combine PUT /items/{item_id}'s path id with its body (validated already: only the id
    is checked, as `check_path_id` checks PATCH's)."""
    return ItemWithId.model_construct(item_id=check_path_id(item_id), **item.model_dump())
