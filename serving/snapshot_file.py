"""The popular snapshot kept on disk, for a recommendation API that starts while Redis is down.

The in-process snapshot (serving/reco_snapshots.py) is what the API serves when Redis does
not answer, but a process started during the outage had none: every route answered 200 with
no items. Each replica now writes the popular items, their scores and their catalogue fields
to `state_dir` at most every `SAVE_EVERY_S`, and a start whose first refresh fails ranks from
that file until a refresh succeeds. Written to a file of its own, then renamed into place, so
replicas sharing the folder never read half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from reco.catalog import ItemIndex
from reco.settings import Settings

log = logging.getLogger(__name__)
FILE_NAME = "popular-snapshot.json"
SAVE_EVERY_S = 60.0  # 20,000 popular items: 1.2 MB, ~5 ms to build and write (a thread)


def path_of(settings: Settings) -> Path:
    return settings.state_dir / FILE_NAME


def save(path: Path, items: ItemIndex) -> None:
    """The popular items with their scores and catalogue fields, as columns: numpy builds
    them, so the thread writing holds the GIL for a few ms, not a Python loop's ~50."""
    rows = items.popular_rows
    names = np.asarray([*items.categories, None], dtype=object)  # code -1: None
    payload = {
        "saved_at": time.time(), "catalogue_version": items.version,
        # Whether ids without catalogue fields were ineligible: the file holds only the
        # popular ones, so the mode cannot be told from it again.
        "catalogue_only": items.catalogue_only_applies,
        "ids": [items.ids[r] for r in rows.tolist()], "popularity": items.popularity[rows],
        "listed": items.listed[rows], "category": names[items.category[rows]].tolist(),
        "price": items.price[rows], "in_stock": items.in_stock[rows],
        "created_at": items.created_at[rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def load(path: Path) -> tuple[ItemIndex, float] | None:
    """The saved snapshot as an index to rank with, and when it was saved; None without a
    usable file (never saved, unreadable, another shape: the caller serves nothing)."""
    try:
        saved = orjson.loads(path.read_bytes())
        columns = zip(saved["ids"], saved["listed"], saved["category"], saved["price"],
                      saved["in_stock"], saved["created_at"], strict=True)
        records = {item: {"category": category, "price": price, "in_stock": in_stock,
                          "created_at": created_at}
                   for item, listed, category, price, in_stock, created_at in columns if listed}
        items = ItemIndex.build(records, zip(saved["ids"], saved["popularity"], strict=True),
                                version=saved["catalogue_version"],
                                catalogue_only="true" if saved["catalogue_only"] else "false")
        return items, float(saved["saved_at"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # a cache of the snapshot: any flaw means starting without it
        log.warning("popular snapshot %s not usable: %r", path, exc)
        return None
