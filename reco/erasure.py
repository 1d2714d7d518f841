"""Erasing a user's data (GDPR's right to erasure): the message that asks for it.

An erasure travels on the events topic, keyed by the user id like the user's events. Kafka
keeps each partition's order, so every consumer meets it after each event of the user sent
before it and before any sent after it: no event in flight escapes it, and no later one is
lost to it. The feature processor then deletes the user's features from Redis, the archiver
the user's events and `users` row from PostgreSQL, each as one more record of its batch
(at-least-once, idempotent). A Kafka header marks the message, so no consumer takes it for an
event; consumers from before erasures dead-letter it (upgrade them first).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, NamedTuple

import msgspec

from reco import keys
from reco.events import CANONICAL_UUID_RE, IDENTIFIER_RE, MAX_TIMESTAMP_MS
from reco.privacy import pseudonym

if TYPE_CHECKING:
    import asyncpg
    from redis import asyncio as aredis

    from reco.settings import Settings

KIND_HEADER = "reco-kind"
ERASURE_KIND = b"erase-user"
HEADERS: list[tuple[str, bytes]] = [(KIND_HEADER, ERASURE_KIND)]


class Erasure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Erase everything stored about `user_id` up to this message."""

    erasure_id: str  # canonical UUID text: the audit row's key (`user_erasures`)
    user_id: str
    requested_at: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMESTAMP_MS)]  # epoch ms

    kafka_headers = HEADERS

    @classmethod
    def of(cls, user_id: str) -> Erasure:
        return cls(str(uuid.uuid4()), user_id, int(time.time() * 1000))

    @property
    def message_id(self) -> str:
        return self.erasure_id

    def to_json_bytes(self) -> bytes:
        return msgspec.json.encode(self)


class Recorded(NamedTuple):
    """An erasure the archiver applied (a `user_erasures` row)."""

    erasure_id: str
    requested_at: datetime
    erased_at: datetime
    events_deleted: int


class Progress(NamedTuple):
    """How far one erasure got: the processor's part (Redis) and the archiver's (PostgreSQL)."""

    erasure_id: str
    features: bool
    archive: Recorded | None

    @property
    def done(self) -> bool:
        """Both parts applied. The processor's marker lasts 90 days from when it applied the
        erasure, which is after the request: past 90 days from the request, the archive's
        record vouches for both."""
        if self.archive is None:
            return False
        marked_since = datetime.now(self.archive.requested_at.tzinfo) - timedelta(
            milliseconds=keys.USER_ERASURES_KEEP_MS)
        return self.features or self.archive.requested_at < marked_since

    def as_json(self) -> dict[str, object]:
        archive = self.archive
        return {"erasure_id": self.erasure_id, "status": "done" if self.done else "pending",
                "features_erased": self.features, "archive_erased": archive is not None,
                "erased_at": None if archive is None else archive.erased_at.isoformat(),
                "events_deleted": None if archive is None else archive.events_deleted}


RECORDED = ("SELECT erasure_id::text, requested_at, erased_at, events_deleted FROM user_erasures"
            " WHERE erasure_id = $1::uuid")


async def progress(pool: asyncpg.Pool, client: aredis.Redis, erasure_id: str) -> Progress:
    """What each consumer has applied of `erasure_id` (an id never issued reads as one still
    in flight: neither part knows it)."""
    mark, row = await asyncio.gather(client.get(keys.event_seen(erasure_id)),
                                     pool.fetchrow(RECORDED, erasure_id))
    # Not an event's marker (a client may have sent an event under this id).
    features = mark is not None and keys.ERASURE_MARK_RE.fullmatch(mark) is not None
    return Progress(erasure_id, features, None if row is None else Recorded(*row))


def recorded(settings: Settings, user_id: str) -> list[Recorded]:
    """The erasures of `user_id` PostgreSQL has applied, oldest first (matched by the user's
    pseudonym under every configured key: the rows do not hold the id)."""
    from reco import db

    pseudonyms = [pseudonym(user_id, key) for key in settings.pseudonym_keys]
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT erasure_id::text, requested_at, erased_at, events_deleted FROM user_erasures"
            " WHERE user_pseudonym = ANY(%s) ORDER BY erased_at", (pseudonyms,))
        return [Recorded(*row) for row in rows]


_decoder = msgspec.json.Decoder(Erasure)


def is_erasure(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a record with these Kafka headers is an erasure (a consumer record's are a
    sequence of (name, value) pairs)."""
    return bool(headers) and (KIND_HEADER, ERASURE_KIND) in [tuple(h) for h in headers]


def decode(value: bytes | None) -> Erasure | str:
    """The erasure in an erasure record's value, or why it is not one (the DLQ reason)."""
    if value is None:
        return "invalid erasure: empty message value"
    try:
        erasure = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"invalid erasure: {exc}"
    if not CANONICAL_UUID_RE.fullmatch(erasure.erasure_id):
        return "invalid erasure: erasure_id is not a UUID in canonical form"
    if not IDENTIFIER_RE.fullmatch(erasure.user_id):
        return "invalid erasure: user_id is not an id (1-128 printable ASCII, no spaces)"
    return erasure
