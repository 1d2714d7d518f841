"""Users erased since a model read its data: publishing the model leaves their lists out.

An erasure (reco/erasure.py) deletes a user's lists of the serving versions. A model whose
extract read the user's events before the erasure still holds the user, so publishing it
afterwards (the training run in progress, a rollback to an older champion) would bring the
lists back. The archiver records each erasure in `user_erasures` by the user's pseudonym,
which is all this needs: the model's users are hashed the same way and matched.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reco.privacy import pseudonym
from spark_jobs.files import MODEL_FILE, PARAMS_FILE

if TYPE_CHECKING:
    from spark_jobs.pipeline import PipelineConfig

log = logging.getLogger(__name__)

READ_AT = "data_read_at"  # the params file's key: when the model's extract began reading
# An erasure's `erased_at` is its transaction's start, and the extract's read a snapshot taken
# after `read_at`: an erasure this close before the read may not have been visible to it.
VISIBILITY_MARGIN = timedelta(minutes=10)


def read_at(model_dir: Path) -> datetime | None:
    """When the model's extract began reading; None for a model trained before it was kept."""
    params = model_dir / PARAMS_FILE
    if not params.is_file():
        return None
    value = json.loads(params.read_text()).get(READ_AT)
    return datetime.fromisoformat(value) if value else None


def erased_pseudonyms(database_url: str, since: datetime | None) -> set[str]:
    """Pseudonyms of the users erased since `since` (all of them for None)."""
    import psycopg

    query, args = "SELECT user_pseudonym FROM user_erasures", ()
    if since is not None:
        query, args = query + " WHERE erased_at >= %s", (since - VISIBILITY_MARGIN,)
    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute(query, args)}


def left_out(cfg: PipelineConfig, model_dir: Path) -> frozenset[str]:
    """The users of the model in `model_dir` erased after it read its data (after any erasure
    when it does not say when it read it)."""
    erased = erased_pseudonyms(cfg.database_url, read_at(model_dir))
    if not erased:
        return frozenset()
    with np.load(model_dir / MODEL_FILE) as data:
        users = data["user_ids"].tolist() if "user_ids" in data.files else []
    key = cfg.log_pseudonym_key or None
    found = frozenset(u for u in users if pseudonym(u, key) in erased)
    if found:
        log.info("%s: %d erased user(s) left out of the published lists", cfg.model, len(found))
    return found
