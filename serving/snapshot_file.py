"""The popular snapshot kept on disk, for a recommendation API that starts while Redis is down.

The in-process snapshot (serving/reco_snapshots.py) is what the API serves when Redis does
not answer, but a process started during the outage had none: every route answered 200 with
no items. Each replica now writes the popular items, their scores and their catalogue fields
to `state_dir` at most every `SAVE_EVERY_S`, and a start that cannot reach Redis ranks from
that file until Redis answers. Written whole and renamed into place, so replicas sharing the
folder never read half a file.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import orjson

from reco.catalog import UNKNOWN_CATEGORY, ItemIndex
from reco.settings import Settings

log = logging.getLogger(__name__)
FILE_NAME = "popular-snapshot.json"
SAVE_EVERY_S = 60.0  # ~20,000 items: a ~2 MB file, written in a thread


def path_of(settings: Settings) -> Path:
    return settings.state_dir / FILE_NAME


def save(path: Path, items: ItemIndex) -> None:
    """The popular items with their scores and catalogue fields (as `item:meta` holds them)."""
    rows = items.popular_rows.tolist()
    payload = {
        "saved_at": time.time(), "catalogue_version": items.version,
        "popular": [[items.ids[r], float(items.popularity[r])] for r in rows],
        "meta": {items.ids[r]: _fields(items, r) for r in rows if items.listed[r]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(orjson.dumps(payload))
    os.replace(partial, path)


def _fields(items: ItemIndex, row: int) -> dict[str, str]:
    fields = {"in_stock": "1" if items.in_stock[row] else "0"}
    if (code := int(items.category[row])) != UNKNOWN_CATEGORY:
        fields["category"] = items.categories[code]
    for name, values in (("price", items.price), ("created_at", items.created_at)):
        if not math.isnan(value := float(values[row])):
            fields[name] = repr(value)
    return fields


def load(path: Path, settings: Settings) -> tuple[ItemIndex, float] | None:
    """The saved snapshot as an index to rank with, and when it was saved; None without a
    usable file (never saved, unreadable: the caller serves nothing, as before)."""
    try:
        saved = orjson.loads(path.read_bytes())
        items = ItemIndex.build(saved["meta"], [(i, s) for i, s in saved["popular"]],
                                version=saved["catalogue_version"],
                                catalogue_only=settings.catalogue_only)
        return items, float(saved["saved_at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("popular snapshot %s not usable: %r", path, exc)
        return None
