"""Users erased since a model read its data: publishing the model leaves their lists out.

An erasure (reco/erasure.py) deletes a user's lists of the serving versions. A model whose
extract read the user's events before the erasure still holds the user, so publishing it
afterwards (the training run in progress, a rollback to an older champion) would bring the
lists back. Erased users are known by pseudonym only (the model's users are hashed the same
way and matched), from two records:
- Redis's `keys.USER_ERASURES`, written by the processor with the deletion (the last 90
  days): each counts, unless PostgreSQL shows the archiver applied that same erasure before
  the model read its data (the user then came back, and the model knows only what followed);
- PostgreSQL's `user_erasures` (every erasure, once the archiver applied it): those applied
  after the model read its data, or all of them for a model that does not say when it read.

A publish announces its version (`publish.announce`) before its first look, so that every
erasure the processor applies from then on deletes the user's lists of that version too. One
applied after the first look may still precede the writing of the user's list: a second look,
once every list is written and before the switch, deletes those.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reco import keys
from reco.privacy import pseudonym
from spark_jobs.files import MODEL_FILE, PARAMS_FILE

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

READ_AT = "data_read_at"  # the params file's key: when the model's extract began reading
# `read_at` and `erased_at` are both PostgreSQL's clock; an erasure's time is when its
# transaction began, and the extract's snapshot is taken after `read_at`: an erasure this
# close before the read may not have been visible to it.
VISIBILITY_MARGIN = timedelta(minutes=10)


def database_now(database_url: str) -> datetime:
    """PostgreSQL's clock, which `user_erasures.erased_at` is on."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT now()").fetchone()[0]


def read_at(model_dir: Path) -> datetime | None:
    """When the model's extract began reading; None for a model trained before it was kept."""
    params = model_dir / PARAMS_FILE
    if not params.is_file():
        return None
    value = json.loads(params.read_text()).get(READ_AT)
    return datetime.fromisoformat(value) if value else None


class ModelUsers:
    """The users of one trained model, hashed (once, when first needed) to match erasures."""

    def __init__(self, model_dir: Path, pseudonym_keys: Sequence[str]) -> None:
        self.model_dir = model_dir
        self.keys = pseudonym_keys  # the current one, then those it replaced
        self._by_pseudonym: dict[str, str] | None = None

    def matching(self, pseudonyms: Collection[str]) -> frozenset[str]:
        """The model's users among these pseudonyms."""
        by_pseudonym = self._hashed() if pseudonyms else {}
        return frozenset(by_pseudonym[p] for p in pseudonyms if p in by_pseudonym)

    def holds(self, user_pseudonym: str) -> bool:
        return user_pseudonym in self._hashed()

    def _hashed(self) -> dict[str, str]:
        if self._by_pseudonym is None:
            with np.load(self.model_dir / MODEL_FILE) as data:
                users = data["user_ids"].tolist() if "user_ids" in data.files else []
            # Erasures recorded before a key's rotation hold the old key's pseudonyms.
            self._by_pseudonym = {pseudonym(u, key): u for key in self.keys for u in users}
        return self._by_pseudonym


def erased(users: ModelUsers, database_url: str, client: redis.Redis) -> frozenset[str]:
    """The model's users erased after it read its data (see the module's docstring)."""
    import psycopg

    read = read_at(users.model_dir)
    since = None if read is None else read - VISIBILITY_MARGIN
    parsed = [keys.parse_user_erasure_member(m.decode() if isinstance(m, bytes) else m)
              for m in client.zrange(keys.USER_ERASURES, 0, -1)]
    in_redis = [(p, e) for p, e in parsed if users.holds(p)]
    with psycopg.connect(database_url) as conn:
        query, args = "SELECT user_pseudonym FROM user_erasures", ()
        if since is not None:
            query, args = query + " WHERE erased_at >= %s", (since,)
        found = {row[0] for row in conn.execute(query, args)}
        ids = [e for _, e in in_redis if e is not None]
        seen_before = set()
        if since is not None and ids:
            seen_before = {row[0] for row in conn.execute(
                "SELECT erasure_id::text FROM user_erasures WHERE erased_at < %s"
                " AND erasure_id = ANY(%s::uuid[])", (since, ids))}
    found.update(p for p, erasure_id in in_redis if erasure_id not in seen_before)
    return users.matching(found)
