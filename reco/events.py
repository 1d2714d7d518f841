"""The event contract: what clients POST and what flows through Kafka."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

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

# 1-128 printable characters without whitespace.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]

MAX_FUTURE_SKEW_S = 300.0
MAX_CONTEXT_KEYS = 32


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

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> int:
        if value is None:
            return int(time.time() * 1000)
        if isinstance(value, bool):
            raise ValueError("must be RFC 3339 text or epoch milliseconds")
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be RFC 3339 text or epoch milliseconds") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp() * 1000)
        raise ValueError("must be RFC 3339 text or epoch milliseconds")

    @field_validator("timestamp")
    @classmethod
    def _not_in_future(cls, value: int, info: ValidationInfo) -> int:
        skew_s = (info.context or {}).get("max_future_skew_s", MAX_FUTURE_SKEW_S)
        if value < 0:
            raise ValueError("must not be negative")
        if value > (time.time() + skew_s) * 1000:
            raise ValueError(f"is more than {int(skew_s)} seconds in the future")
        return value

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > MAX_CONTEXT_KEYS:
            raise ValueError(f"must have at most {MAX_CONTEXT_KEYS} keys")
        return value

    @property
    def timestamp_s(self) -> float:
        return self.timestamp / 1000.0

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> Event:
        # Messages already on the topic were accepted: no future-skew check on replay.
        return cls.model_validate_json(raw, context={"max_future_skew_s": float("inf")})


def describe_errors(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Flatten a pydantic ValidationError into [{loc, field, reason}] entries for clients."""
    out = []
    for err in exc.errors():
        loc = prefix + tuple(err.get("loc", ()))
        field = ".".join(str(p) for p in loc if not isinstance(p, int)) or "body"
        reason = err.get("msg", "invalid").removeprefix("Value error, ")
        out.append({"loc": list(loc), "field": field, "reason": reason})
    return out
