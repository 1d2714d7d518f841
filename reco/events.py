"""The event contract: what clients POST and what flows through Kafka."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, NotRequired, TypedDict

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

EventType = Literal["view", "click", "cart", "purchase"]
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")

# 1-128 printable ASCII characters without whitespace.
ID_PATTERN = r"^[!-~]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
# The same rule for hand-written checks (fullmatch: `$` would let a final newline through).
IDENTIFIER_RE = re.compile(r"[!-~]{1,128}")
# A UUID as str(uuid.UUID) writes it.
CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What clients read instead of pydantic's "String should match pattern '^[!-~]+$'".
ID_REASON = "must be printable ASCII characters ('!' to '~') without spaces"
# A '+' in a query string is a space once decoded (form encoding): "a+b" arrives as "a b".
QUERY_ID_REASON = ID_REASON + "; in a query string '+' means a space: send '+' as %2B"
# An id in a URL path (PUT /items/{id}, GET /items/{id}/similar): clients remove "." and ".."
# segments (RFC 3986) before sending, and browsers %2E and %2E%2E too (WHATWG URL), though
# curl and server-side HTTP libraries send those and they reach the route. Left out of the
# documented schema, so that generated clients and the fuzz tests do not send them as such.
PATH_ID_SCHEMA = {"not": {"enum": [".", ".."]}}

MAX_FUTURE_SKEW_S = 300.0
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_DEPTH = 32  # levels of objects and arrays
# The context's JSON at most; Settings.max_context_bytes sets it for the API. Keys alone did not
# bound it: a 960 KB body became a 2 MB message the producer refused (then a 503, retried forever).
MAX_CONTEXT_BYTES = 4096
# The end of year 9999: datetime (hence the archiver's timestamptz) holds nothing later.
MAX_TIMESTAMP_MS = 253_402_300_799_999
# 1973-03-03: a smaller number from a client is epoch seconds sent as milliseconds (it would
# be taken for January 1970 and count for nothing), not a shop's event.
MIN_TIMESTAMP_MS = 100_000_000_000
# A full RFC 3339 date-time, offset required: fromisoformat alone also takes a date alone,
# compact forms and times without an offset (whose zone is unknown: they were taken as UTC).
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_TIMESTAMP_FORMS = ("must be an RFC 3339 date-time with an offset (2026-01-02T03:04:05Z) "
                    "or epoch milliseconds")
# Namespace of the ids given to messages that came without one (see Event.from_json_bytes).
_RECORD_IDS = uuid.UUID("5d0f3c1e-8f7a-4c55-9a57-2f2b1e0c7d41")
# Validation context of messages read back from the topic (see Event.from_json_bytes).
REPLAY_CONTEXT = {"max_future_skew_s": math.inf, "max_context_bytes": math.inf,
                  "min_timestamp_ms": 0, "check_context_values": False}


class Event(BaseModel):
    """One interaction. `timestamp` is normalised to epoch milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    user_id: Identifier
    item_id: Identifier
    event_type: EventType
    timestamp: int = Field(default_factory=lambda: int(time.time() * 1000))
    session_id: Identifier | None = None
    context: dict[str, Any] | None = None

    kafka_headers: ClassVar[None] = None  # erasures have one (reco.erasure); events none

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any, info: ValidationInfo) -> int:
        if value is None:
            return (info.context or {}).get("default_timestamp_ms") or int(time.time() * 1000)
        return epoch_ms(value, (info.context or {}).get("min_timestamp_ms", MIN_TIMESTAMP_MS))

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, value: int, info: ValidationInfo) -> int:
        # Bounds are checked on replay too: the archiver cannot store a time past year 9999.
        return within_range(value, future_skew_s(info))

    @field_validator("context")
    @classmethod
    def _small_context(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        if value is None:
            return None
        options = info.context or {}
        problem = small_object_problem(value, options.get("max_context_bytes", MAX_CONTEXT_BYTES),
                                       options.get("check_context_values", True))
        if problem:
            raise ValueError(problem)
        return value

    @property
    def timestamp_s(self) -> float:
        return self.timestamp / 1000.0

    @property
    def message_id(self) -> str:
        return str(self.event_id)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes, record: str | None = None,
                        record_ms: int | None = None) -> Event:
        """A message read back from the topic. A message with no id or time (from a producer
        other than the ingest API) gets them from its `record` (topic/partition/offset/time)
        and the record's Kafka time `record_ms`: the same at every redelivery, and for every
        consumer (a random id and `now` made the archiver store each redelivery again)."""
        # Messages already on the topic were accepted (and fit the broker): no future-skew
        # or context-size check on replay, so none acknowledged before a limit changed is lost.
        event = cls.model_validate_json(raw, context={**REPLAY_CONTEXT,
                                                      "default_timestamp_ms": record_ms})
        defaults: dict[str, Any] = {}
        if record is not None and "event_id" not in event.model_fields_set:
            defaults["event_id"] = uuid.uuid5(_RECORD_IDS, record)
        if record_ms is not None and "timestamp" not in event.model_fields_set:
            defaults["timestamp"] = record_ms
        return event.model_copy(update=defaults) if defaults else event


def small_object_problem(value: dict[str, Any], max_bytes: float = MAX_CONTEXT_BYTES,
                         check_values: bool = True, max_keys: int = MAX_CONTEXT_KEYS
                         ) -> str | None:
    """Why a free-form JSON object (an event's `context`, an item's `attributes`) is refused,
    or None: at most `max_keys` keys, MAX_CONTEXT_DEPTH levels, finite numbers (`check_values`)
    and `max_bytes` as JSON."""
    if len(value) > max_keys:
        return f"must have at most {max_keys} keys"
    problem = _nesting_problem(value) if check_values else None
    if problem:
        return problem
    size = len(pydantic_core.to_json(value, serialize_unknown=True))
    return f"must be at most {max_bytes} bytes as JSON, got {size}" if size > max_bytes else None


def _nesting_problem(value: dict[str, Any]) -> str | None:
    """Why a live object cannot be published or stored as it is (nesting, numbers), or None."""
    # A stack, not recursion: the batch route's parser takes ~1,000 levels of nesting.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            # JSON has none: published, they would silently become null.
            return "numbers must be finite (NaN and Infinity are not JSON)"
        if isinstance(item, dict | list) and depth > MAX_CONTEXT_DEPTH:
            # Deeper, the publisher's serializer gave up: a 503 that every retry met again.
            return f"must nest at most {MAX_CONTEXT_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def epoch_ms(value: Any, floor: int = MIN_TIMESTAMP_MS) -> int:
    """Epoch milliseconds of a client's time: an RFC 3339 date-time with an offset, or epoch
    milliseconds from `floor` on (the rule of event timestamps and item `created_at` alike)."""
    if isinstance(value, bool):
        raise ValueError(_TIMESTAMP_FORMS)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number of epoch milliseconds")
    if isinstance(value, int | float):
        if value < 0:  # checked before int(): -0.5 would pass as 0
            raise ValueError("must not be negative")
        if value < floor:
            raise ValueError(f"must be at least {MIN_TIMESTAMP_MS} (1973-03-03T09:46:40Z): "
                             "a smaller number is epoch seconds, and milliseconds are expected")
        return int(value)
    if isinstance(value, str):
        ms = _rfc3339_ms(value)
        if ms < floor:
            raise ValueError("must be at or after 1973-03-03T09:46:40Z")
        return ms
    raise ValueError(_TIMESTAMP_FORMS)


def future_skew_s(info: ValidationInfo) -> float:
    """How far ahead of this host's clock a time may be, from the validation context (the API
    passes RECO_MAX_FUTURE_SKEW_S)."""
    return (info.context or {}).get("max_future_skew_s", MAX_FUTURE_SKEW_S)


def within_range(ms: int, max_future_skew_s: float = MAX_FUTURE_SKEW_S) -> int:
    """`ms` if it is neither negative, nor past year 9999, nor further ahead of this host's
    clock than `max_future_skew_s`."""
    if ms < 0:
        raise ValueError("must not be negative")
    if ms > MAX_TIMESTAMP_MS:
        raise ValueError(f"must be at most {MAX_TIMESTAMP_MS} (9999-12-31T23:59:59.999Z)")
    if ms > (time.time() + max_future_skew_s) * 1000:
        raise ValueError(f"is more than {int(max_future_skew_s)} seconds in the future")
    return ms


def _rfc3339_ms(value: str) -> int:
    """Epoch milliseconds of a full RFC 3339 date-time with an offset."""
    if not _RFC3339.fullmatch(value):
        raise ValueError(_TIMESTAMP_FORMS)
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:  # in the shape but not a date (month 13, second 60, ...)
        raise ValueError(_TIMESTAMP_FORMS) from None
    return int(parsed.timestamp() * 1000)


class ErrorEntry(TypedDict):
    """One refused value, as both APIs' 422 bodies list them (serving/errors.py renders them)."""

    loc: list[str | int]  # where it was: ["query", "k"], ["path", "item_id"], ["events", 3, ...]
    field: str  # the dotted name clients read: "k", "path.item_id", "events.user_id"
    reason: str
    index: NotRequired[int]  # the event's or item's position, in a batch's entries only


def error_entry(loc: list[str | int], field: str, reason: str) -> ErrorEntry:
    return {"loc": loc, "field": field, "reason": reason}


def describe_errors(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[ErrorEntry]:
    """Flatten a pydantic ValidationError into [{loc, field, reason}] entries for clients."""
    out = []
    for err in exc.errors():
        # The body as a whole (not JSON, not an object) has no loc of its own: ["body"], as
        # the batch routes name it.
        loc = prefix + tuple(err.get("loc", ())) or ("body",)
        field = ".".join(str(p) for p in loc if not isinstance(p, int))
        out.append(error_entry(list(loc), field, error_reason(err)))
    return out


def error_reason(err: Mapping[str, Any], id_reason: str = ID_REASON) -> str:
    """A pydantic error's message for clients: an id pattern mismatch says what ids may hold."""
    ctx = err.get("ctx") or {}
    if err.get("type") == "string_pattern_mismatch" and ctx.get("pattern") == ID_PATTERN:
        return id_reason
    if err.get("type") == "json_invalid" and "recursion limit" in err.get("msg", ""):
        # The parser's own limit (~200 levels), far past the one the fields have.
        return (f"JSON nests too deeply: objects and arrays (context, attributes) nest at most "
                f"{MAX_CONTEXT_DEPTH} levels")
    return err.get("msg", "invalid").removeprefix("Value error, ")
