"""What `reco replay` sends: Parquet event and catalogue rows as the ingest API's JSON rows.

Columns are checked before anything is sent (`DataFileError` names the file or column and the
reason). Times are epoch milliseconds: integer columns as they are, Arrow timestamp and date
columns converted (timezone-naive ones read as UTC). A row without an `event_id` gets one
derived from its content (before the time shift) and its position in the file, so replaying
the same file again sends the same ids and the consumers count each event once. A row without
a time also takes the file's digest: it is stamped on arrival, so equal rows of two files are
two events (one id would have counted the second file's as a duplicate). Decimal
columns (prices as Spark writes them) are sent as numbers. A row the API could not take at all
(a `context` that is not JSON, a value JSON cannot carry) becomes a `Rejected` with its reason.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reco.data.schema import EVENTS_FILE, ITEMS_FILE, DataFileError, open_parquet, require_columns
from reco.events import MIN_TIMESTAMP_MS

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "timestamp", "session_id",
                 "context")
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type")
ITEM_COLUMNS = ("item_id", "title", "category", "price", "in_stock", "attributes", "created_at")
# Never change it: the ids derived under it are what makes a file replayed again count once.
EVENT_ID_NAMESPACE = uuid.UUID("47abc508-40bd-4f7f-9beb-293f70961e88")


@dataclass(frozen=True)
class Rejected:
    """A row refused before sending, counted like an API rejection."""

    reason: str  # "field: reason"


Row = dict[str, Any] | Rejected


def replay_paths(path: Path, items: Path | None = None) -> tuple[Path, Path | None]:
    """The events file and catalogue of FILE, or of a folder holding events.parquet (its
    items.parquet comes along unless a catalogue is given)."""
    if not path.is_dir():
        return path, items
    if not (path / EVENTS_FILE).is_file():
        raise DataFileError(f"{path}: a folder without {EVENTS_FILE}")
    if items is None and (path / ITEMS_FILE).is_file():
        items = path / ITEMS_FILE
    return path / EVENTS_FILE, items


def _time_column(schema: pa.Schema, name: str, where: str) -> None:
    kind = schema.field(name).type
    if not (pa.types.is_integer(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        raise DataFileError(f"{where}: column {name} is {kind}; expected epoch milliseconds "
                            "(integers) or an Arrow timestamp")


def _text_column(schema: pa.Schema, name: str, where: str) -> None:
    kind = schema.field(name).type
    try:
        pa.array([], type=kind).cast(pa.string())  # ids are sent as text
    except pa.ArrowException:
        raise DataFileError(f"{where}: column {name} is {kind}, not text or a number") from None


def check_events(schema: pa.Schema, where: str) -> None:
    require_columns(schema, REQUIRED_EVENT_COLUMNS, where,
                    "every event needs user_id, item_id and event_type")
    for name in ("user_id", "item_id"):
        _text_column(schema, name, where)
    if "timestamp" in schema.names:
        _time_column(schema, "timestamp", where)


def check_items(schema: pa.Schema, where: str) -> None:
    require_columns(schema, ("item_id",), where, "every catalogue row needs item_id")
    _text_column(schema, "item_id", where)
    if "created_at" in schema.names:
        _time_column(schema, "created_at", where)


def open_events(path: Path) -> pq.ParquetFile:
    """The events file, its columns checked."""
    file = open_parquet(path)
    check_events(file.schema_arrow, str(path))
    return file


def read_items(path: Path) -> pa.Table:
    """The catalogue file, its columns checked."""
    file = open_parquet(path)
    check_items(file.schema_arrow, str(path))
    try:
        return file.read(columns=[c for c in ITEM_COLUMNS if c in file.schema_arrow.names])
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: cannot be read ({exc})") from None


def read_batches(file: pq.ParquetFile, path: Path) -> Iterator[pa.RecordBatch]:
    """The events file 10,000 rows at a time; a part that cannot be read stops the replay."""
    columns = [c for c in EVENT_COLUMNS if c in file.schema_arrow.names]
    try:
        yield from file.iter_batches(batch_size=10_000, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: cannot be read past this point ({exc})") from None


def epoch_ms(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Times as epoch milliseconds: integers as they are, timestamps and dates converted."""
    kind = column.type
    if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        return column
    tz = kind.tz if pa.types.is_timestamp(kind) else None
    # safe=False: micro- and nanoseconds are truncated to milliseconds rather than refused.
    return pc.cast(pc.cast(column, pa.timestamp("ms", tz), safe=False), pa.int64())


def _max_ms(column: pa.Array | pa.ChunkedArray, name: str, where: str) -> int | None:
    """The column's latest time in epoch ms. Integers all before 1973-03-03 are refused: epoch
    seconds, which the shift to now would squeeze 1000-fold into plausible milliseconds (a
    month of events sent as 43 minutes, each passing the API's checks)."""
    latest = pc.max(epoch_ms(column)).as_py()
    if latest is not None and pa.types.is_integer(column.type) and latest < MIN_TIMESTAMP_MS:
        raise DataFileError(f"{where}: column {name} ends at {latest}, before "
                            f"{MIN_TIMESTAMP_MS} (1973-03-03) in epoch milliseconds: epoch "
                            "seconds? Multiply them by 1000")
    return latest


def last_event_ms(file: pq.ParquetFile, where: str) -> int | None:
    """The latest `timestamp` in epoch ms, from the row-group statistics when every group has
    them (no data read); None when no event has one."""
    if "timestamp" not in file.schema_arrow.names:
        return None
    maxima = []
    for stats in _timestamp_statistics(file):
        if stats is None or not stats.has_min_max:
            return _max_ms(file.read(columns=["timestamp"])["timestamp"], "timestamp", where)
        maxima.append(stats.max)
    return _max_ms(pa.array(maxima, type=file.schema_arrow.field("timestamp").type),
                   "timestamp", where)


def _timestamp_statistics(file: pq.ParquetFile) -> Iterator[Any]:
    """The `timestamp` column's statistics in each row group (None where a group has none)."""
    meta = file.metadata
    leaf = [meta.schema.column(i).path for i in range(meta.num_columns)].index("timestamp")
    for group in range(meta.num_row_groups):
        yield meta.row_group(group).column(leaf).statistics


def file_has_untimed_rows(file: pq.ParquetFile) -> bool:
    """Whether an event may lack a time: no `timestamp` column, or nulls in it (from the
    row-group statistics; missing statistics count as yes)."""
    if "timestamp" not in file.schema_arrow.names:
        return True
    return any(stats is None or not stats.has_null_count or stats.null_count
               for stats in _timestamp_statistics(file))


def table_has_untimed_rows(table: pa.Table) -> bool:
    return "timestamp" not in table.schema.names or table["timestamp"].null_count > 0


def table_last_ms(table: pa.Table, where: str) -> int | None:
    return (_max_ms(table["timestamp"], "timestamp", where)
            if "timestamp" in table.schema.names else None)


def derived_event_id(row: dict[str, Any], position: int, source: str) -> str:
    """uuid5 of a row's content and its position in the file: the same on every run, and
    different for equal rows at other positions (two identical clicks are two events). A row
    without a timestamp adds `source`, its file's digest (`file_digest`, `table_digest`)."""
    content = orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str).decode()
    name = f"{position}:{content}" if "timestamp" in row else f"{source}:{position}:{content}"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def table_digest(table: pa.Table) -> str:
    """SHA-256 of a table's Arrow IPC stream: the same for the same table built the same way."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def to_json(value: Any) -> bytes:
    """JSON as the API reads it: orjson, or the standard library for what orjson refuses and
    the API takes (integers past 64 bits in a `context`). There NaN is refused (ValueError):
    orjson writes it as null, the standard library as a token no JSON reader takes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def json_body(key: str, rows: list[dict[str, Any]]) -> bytes:
    """`{key: rows}`, each row encoded on its own (`to_json`), so that a row's JSON never
    depends on the rows sent beside it."""
    return b'{"%s":[%s]}' % (key.encode(), b",".join(map(to_json, rows)))


def _unsendable(row: dict[str, Any]) -> Rejected | None:
    """The rejection of a row holding a value JSON cannot carry: refused here, it would have
    failed its whole batch."""
    try:
        to_json(row)
    except (TypeError, ValueError):
        for name, value in row.items():
            try:
                to_json(value)
            except (TypeError, ValueError) as exc:
                return Rejected(f"{name}: not representable in JSON ({exc})")
    return None


def _parse_json(row: dict[str, Any], name: str) -> Rejected | None:
    """Parse a JSON text column in place; the rejection when it is not JSON."""
    if isinstance(row.get(name), str):
        try:
            row[name] = json.loads(row[name])
        except json.JSONDecodeError as exc:
            return Rejected(f"{name}: not valid JSON ({exc.msg})")
    return None


def _clean(row: dict[str, Any], position: int, offset_ms: int, source: str) -> Row:
    out = {k: v for k, v in row.items() if v is not None}
    # A client-side id makes a retried batch, and the same file sent again, idempotent
    # downstream (the processor's markers and the archiver dedup on it).
    if "event_id" not in out:
        out["event_id"] = derived_event_id(out, position, source)
    if "timestamp" in out:
        out["timestamp"] = int(out["timestamp"]) + offset_ms
    return _parse_json(out, "context") or _unsendable(out) or out


def _columns(data: pa.RecordBatch | pa.Table, names: Iterable[str], text: Iterable[str],
             time: str) -> dict[str, Any]:
    """The columns to send, ids as text and times as epoch ms."""
    columns = {name: data[name] for name in names if name in data.schema.names}
    for name, column in columns.items():
        if pa.types.is_decimal(column.type):  # a price as Spark writes it; JSON has no decimal
            columns[name] = column.cast(pa.float64())
    for name in text:
        columns[name] = columns[name].cast(pa.string())
    if time in columns:
        columns[time] = epoch_ms(columns[time])
    return columns


def event_rows(batches: Iterable[pa.RecordBatch], offset_ms: int = 0,
               source: str = "") -> Iterator[Row]:
    """Event dicts as the API takes them: ids as text, None fields left out, time shifted;
    `source` is the digest of the file they come from, for rows without a time
    (`derived_event_id`)."""
    position = 0
    for batch in batches:
        columns = _columns(batch, EVENT_COLUMNS, ("user_id", "item_id"), "timestamp")
        for row in pa.RecordBatch.from_pydict(columns).to_pylist():
            yield _clean(row, position, offset_ms, source)
            position += 1


def item_rows(table: pa.Table, where: str, offset_ms: int = 0,
              latest_ms: int | None = None) -> list[Row]:
    """Catalogue rows for POST /items/batch (attributes parsed, created_at shifted like events,
    and at most `latest_ms`: where the shift put the last event, now; an item the export has
    from after the event log ended was refused as dated in the future)."""
    if "created_at" in table.schema.names:
        _max_ms(table["created_at"], "created_at", where)
    rows: list[Row] = []
    for row in pa.table(_columns(table, ITEM_COLUMNS, ("item_id",), "created_at")).to_pylist():
        row = {k: v for k, v in row.items() if v is not None}
        if "created_at" in row:
            row["created_at"] = int(row["created_at"]) + offset_ms
            if latest_ms is not None:
                row["created_at"] = min(row["created_at"], latest_ms)
        rows.append(_parse_json(row, "attributes") or _unsendable(row) or row)
    return rows
