"""Users erased since a model read its data: publishing the model leaves their lists out.

An erasure (reco/erasure.py) deletes a user's lists of the serving versions. A model whose
extract read the user's events before the erasure still holds the user, so publishing it
afterwards (the training run in progress, a rollback to an older champion) would bring the
lists back. Erased users are known by pseudonym only: from PostgreSQL's `user_erasures` (every
erasure, once the archiver applied it) and Redis's `keys.USER_ERASURES` (once the processor
did, kept 90 days); the model's users are hashed the same way and matched.

Before its writes, a publish leaves out (and deletes, should an older publish of the version
have written them) the lists of users erased since the model read its data. An erasure the
processor applies while the version is written is caught after the switch: either it came
before the switch, and is in `keys.USER_ERASURES` then, or after it, and deleted the new
version's list itself (the processor re-plans an erasure when the versions switched).
"""

from __future__ import annotations

import json
import logging
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
# An erasure's time is when its transaction began (PostgreSQL) or was planned (Redis), and the
# extract's snapshot is taken after `read_at`: an erasure this close before the read may not
# have been visible to it.
VISIBILITY_MARGIN = timedelta(minutes=10)


def read_at(model_dir: Path) -> datetime | None:
    """When the model's extract began reading; None for a model trained before it was kept."""
    params = model_dir / PARAMS_FILE
    if not params.is_file():
        return None
    value = json.loads(params.read_text()).get(READ_AT)
    return datetime.fromisoformat(value) if value else None


def in_postgres(database_url: str, since: datetime | None) -> set[str]:
    """Pseudonyms of the users the archiver erased since `since` (all of them for None)."""
    import psycopg

    query, args = "SELECT user_pseudonym FROM user_erasures", ()
    if since is not None:
        query, args = query + " WHERE erased_at >= %s", (since,)
    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute(query, args)}


def in_redis(client: redis.Redis, since: datetime | None) -> set[str]:
    """Pseudonyms of the users the processor erased since `since` (all it keeps for None)."""
    low = "-inf" if since is None else int(since.timestamp() * 1000)
    return {m.decode() if isinstance(m, bytes) else m
            for m in client.zrangebyscore(keys.USER_ERASURES, low, "+inf")}


class ModelUsers:
    """The users of one trained model, hashed (once, when first needed) to match erasures."""

    def __init__(self, model_dir: Path, pseudonym_key: str) -> None:
        self.model_dir = model_dir
        self.key = pseudonym_key or None
        self._by_pseudonym: dict[str, str] | None = None

    def matching(self, pseudonyms: set[str]) -> frozenset[str]:
        if not pseudonyms:
            return frozenset()
        if self._by_pseudonym is None:
            with np.load(self.model_dir / MODEL_FILE) as data:
                users = data["user_ids"].tolist() if "user_ids" in data.files else []
            self._by_pseudonym = {pseudonym(u, self.key): u for u in users}
        return frozenset(self._by_pseudonym[p] for p in pseudonyms if p in self._by_pseudonym)


def erased_since_read(users: ModelUsers, database_url: str, client: redis.Redis
                      ) -> frozenset[str]:
    """The model's users erased after it read its data (after any erasure when it does not
    say when it read it)."""
    read = read_at(users.model_dir)
    since = None if read is None else read - VISIBILITY_MARGIN
    return users.matching(in_postgres(database_url, since) | in_redis(client, since))
