"""Arrow schemas of the Parquet files the data commands write, and moving data in time."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"

# Events: one row per interaction, sorted by timestamp (epoch milliseconds, UTC).
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("session_id", pa.string()),
    ]
)

# Catalogue: `attributes` is a JSON object as text (genres, release year, ...).
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("in_stock", pa.bool_(), nullable=False),
        pa.field("created_at", pa.int64(), nullable=False),
        pa.field("attributes", pa.string()),
    ]
)

# Parquet written the same way everywhere so that equal tables give byte-identical files.
PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}


class DataFileError(ValueError):
    """A data file a command cannot use; the message names the file or column and the reason."""


def open_parquet(path: Path) -> pq.ParquetFile:
    """The Parquet file at `path`, or a `DataFileError` saying why it cannot be read."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: cannot be read as Parquet ({exc})") from None


def require_columns(schema: pa.Schema, columns: Iterable[str], where: str, why: str) -> None:
    """A `DataFileError` naming the first of `columns` missing from `schema`, and `why`."""
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataFileError(f"{where}: no {missing[0]} column (its columns: "
                            f"{', '.join(schema.names) or 'none'}); {why}")


def write_table(table: pa.Table, path: Path, schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(schema.names).cast(schema), path, **PARQUET_OPTIONS)
    return path


def now_ms() -> int:
    return int(time.time() * 1000)


def shift_offset_ms(last_ms: int, now: int | None = None) -> int:
    """Milliseconds to add so that the event at `last_ms` lands at `now` (default: the clock)."""
    return (now_ms() if now is None else now) - int(last_ms)


def shift_to_now(
    events: pd.DataFrame, now: int | None = None, items: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Move a dataset in time so its last event is at `now`, keeping every relative gap.

    The live feature store decays popularity with time and the ingest API refuses future
    timestamps, so a 1998 dataset has to be brought to the present before it is replayed.
    Item `created_at` moves by the same offset so "new arrival" stays meaningful.
    """
    offset = shift_offset_ms(int(events["timestamp"].max()), now)
    events = events.assign(timestamp=events["timestamp"] + offset)
    if items is not None:
        items = items.assign(created_at=items["created_at"] + offset)
    return events, items
