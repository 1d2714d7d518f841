"""Replay a Parquet event file through the ingest HTTP API, keeping each user's events in order.

Events are read in file order (the data commands write them sorted by time, MovieLens' ties in
`reco.event_order`'s order) and dealt into K lanes by crc32(user_id) % K; each lane sends its
batches one after another, so a user's events never overtake each other, while K requests are
in flight for throughput. 503s and connection errors are retried with backoff (honouring
Retry-After); a 422 rejects only the events it names: they are recorded with their reasons and
the rest of the batch is sent again. A 401 or 403 stops the replay (`ReplayRefused`): no batch
would get through.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from reco.data.schema import parquet_max, shift_offset_ms

EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "timestamp", "session_id",
                 "context")
ITEM_COLUMNS = ("item_id", "title", "category", "price", "in_stock", "attributes", "created_at")
RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ReplayOptions:
    url: str = "http://127.0.0.1:8080"
    batch_size: int = 500
    rate: float | None = None  # events per second over all lanes; None = as fast as possible
    lanes: int = 4
    max_retries: int = 10
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    timeout_s: float = 30.0
    api_key: str | None = field(default=None, repr=False)  # X-API-Key, when auth is on


class ReplayRefused(Exception):
    """The API refused the requests themselves (401, 403): every batch would be refused."""


@dataclass
class ReplaySummary:
    sent: int = 0  # events offered to the API
    accepted: int = 0
    rejected: int = 0  # refused with a 422 (not retried)
    failed: int = 0  # given up on after retries (broker down for too long, API gone)
    rejections: Counter[str] = field(default_factory=Counter)  # "field: reason" -> events
    requests: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    items_sent: int = 0
    items_accepted: int = 0
    items_rejected: int = 0  # refused with a 422
    items_failed: int = 0  # given up on after retries

    def exit_status(self) -> int:
        """What `reco replay` exits with, for a shop's scripts: 0 when everything sent was
        accepted; 1 when some events or items were not delivered (retries ran out: running
        again may get them through); 3 when the API rejected some as invalid (running again
        would not help: the summary lists the reasons)."""
        if self.failed or self.items_failed:
            return 1
        if self.rejected or self.items_rejected:
            return 3
        return 0

    def percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {}
        values = np.percentile(np.array(self.latencies_ms), [50, 95, 99])
        return {f"p{q}": round(float(v), 2) for q, v in zip((50, 95, 99), values, strict=True)}

    @property
    def events_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "accepted": self.accepted, "rejected": self.rejected,
            "failed": self.failed, "rejections": dict(self.rejections.most_common()),
            "requests": self.requests, "retries": self.retries,
            "latency_ms": self.percentiles(), "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1), "items_sent": self.items_sent,
            "items_accepted": self.items_accepted, "items_rejected": self.items_rejected,
            "items_failed": self.items_failed,
        }


class _RateLimiter:
    """Paces batches so that events leave at `rate` per second on average."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.next_free = rate, 0.0
        self.lock = asyncio.Lock()

    async def acquire(self, n: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(self.next_free, now)
            self.next_free = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


def _error_index(entry: dict[str, Any]) -> int | None:
    if isinstance(entry.get("index"), int):
        return entry["index"]
    return next((p for p in entry.get("loc", []) if isinstance(p, int)), None)


def _reason(entry: dict[str, Any]) -> str:
    name = str(entry.get("field") or "body").removeprefix("events.").removeprefix("items.")
    return f"{name}: {entry.get('reason') or entry.get('msg') or 'invalid'}"


def parse_rejection(response: httpx.Response) -> list[dict[str, Any]]:
    """The error entries of a 422, wherever the API put the list ({errors|detail: [...]})."""
    try:
        body = response.json()
    except ValueError:
        return []
    if isinstance(body, dict):
        body = body.get("errors", body.get("detail", []))
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


class _Sender:
    """One HTTP client shared by the lanes; every request outcome lands in the summary."""

    def __init__(self, client: httpx.AsyncClient, opts: ReplayOptions, summary: ReplaySummary,
                 limiter: _RateLimiter) -> None:
        self.client, self.opts, self.summary, self.limiter = client, opts, summary, limiter

    async def _request(self, path: str, body: bytes) -> httpx.Response | None:
        """POST with retries on 5xx/429 and connection errors; None when it gave up."""
        delay = self.opts.backoff_s
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                self.summary.retries += 1
            started = time.perf_counter()
            try:
                resp = await self.client.post(path, content=body,
                                              headers={"content-type": "application/json"})
            except httpx.TransportError:
                wait = delay
            else:
                self.summary.requests += 1
                self.summary.latencies_ms.append((time.perf_counter() - started) * 1000)
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                retry_after = _retry_after(resp)
                wait = delay if retry_after is None else retry_after
            await asyncio.sleep(min(wait, self.opts.max_backoff_s * 6))
            delay = min(delay * 2, self.opts.max_backoff_s)
        return None

    async def send(self, path: str, key: str, rows: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Send rows under body key `key`; returns (accepted, rejected, failed)."""
        accepted = rejected = 0
        await self.limiter.acquire(len(rows))
        while rows:
            resp = await self._request(path, orjson.dumps({key: rows}))
            if resp is None:
                return accepted, rejected, len(rows)
            if resp.is_success:
                return accepted + len(rows), rejected, 0
            if resp.status_code in (401, 403):
                raise ReplayRefused(
                    f"{path}: HTTP {resp.status_code} {resp.text[:200]} (the ingest API's writes "
                    "need one of its RECO_API_KEYS: pass --api-key)")
            errors = parse_rejection(resp) if resp.status_code == 422 else []
            bad: dict[int, str] = {}
            for entry in errors:
                index = _error_index(entry)
                if index is not None and 0 <= index < len(rows):
                    bad.setdefault(index, _reason(entry))
            if not bad:  # nothing to single out: the whole batch is refused
                reason = (_reason(errors[0]) if errors
                          else f"HTTP {resp.status_code}: {resp.text[:200]}")
                self.summary.rejections[reason] += len(rows)
                return accepted, rejected + len(rows), 0
            for reason in bad.values():
                self.summary.rejections[reason] += 1
            rejected += len(bad)
            rows = [row for i, row in enumerate(rows) if i not in bad]
        return accepted, rejected, 0


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _clean(row: dict[str, Any], offset_ms: int) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if v is not None}
    # A client-side id makes a retried batch idempotent downstream (the archiver dedups on it).
    if "event_id" not in out:
        out["event_id"] = str(uuid.uuid4())
    if "timestamp" in out:
        out["timestamp"] = int(out["timestamp"]) + offset_ms
    if isinstance(out.get("context"), str):
        out["context"] = json.loads(out["context"])
    return out


def event_rows(batches: Iterable[pa.RecordBatch], offset_ms: int = 0) -> Iterator[dict[str, Any]]:
    """Event dicts as the API takes them: ids as text, None fields left out, time shifted."""
    for batch in batches:
        names = [c for c in EVENT_COLUMNS if c in batch.schema.names]
        batch = batch.select(names)
        for name in ("user_id", "item_id"):
            if batch.schema.field(name).type != pa.string():
                batch = batch.set_column(names.index(name), name, batch[name].cast(pa.string()))
        for row in batch.to_pylist():
            yield _clean(row, offset_ms)


async def _replay_events(rows: Iterable[dict[str, Any]], sender: _Sender, opts: ReplayOptions,
                         progress: Callable[[int], None] | None) -> None:
    summary = sender.summary
    queues: list[asyncio.Queue[list[dict[str, Any]] | None]] = [
        asyncio.Queue(maxsize=2) for _ in range(opts.lanes)
    ]

    async def lane(queue: asyncio.Queue[list[dict[str, Any]] | None]) -> None:
        while (batch := await queue.get()) is not None:
            ok, bad, failed = await sender.send("/events/batch", "events", batch)
            summary.accepted += ok
            summary.rejected += bad
            summary.failed += failed
            if progress:
                progress(len(batch))

    workers = [asyncio.create_task(lane(q)) for q in queues]

    async def put(k: int, batch: list[dict[str, Any]] | None) -> None:
        # Wait for room in the lane, but surface a lane's crash instead of blocking on it.
        putter = asyncio.ensure_future(queues[k].put(batch))
        await asyncio.wait({putter, *workers}, return_when=asyncio.FIRST_COMPLETED)
        for worker in workers:
            if worker.done() and worker.exception() is not None:
                putter.cancel()
                raise worker.exception()  # type: ignore[misc]
        await putter

    buffers: list[list[dict[str, Any]]] = [[] for _ in range(opts.lanes)]
    try:
        for n, row in enumerate(rows, 1):
            k = zlib.crc32(str(row.get("user_id", "")).encode()) % opts.lanes
            buffers[k].append(row)
            summary.sent += 1
            if len(buffers[k]) >= opts.batch_size:
                await put(k, buffers[k])
                buffers[k] = []
            elif n % 5000 == 0:
                await asyncio.sleep(0)  # let lanes run while a long file is being read
        for k, buffer in enumerate(buffers):
            if buffer:
                await put(k, buffer)
            await put(k, None)
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()


async def _replay_items(rows: list[dict[str, Any]], sender: _Sender, batch_size: int) -> None:
    summary = sender.summary
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ok, bad, failed = await sender.send("/items/batch", "items", chunk)
        summary.items_sent += len(chunk)
        summary.items_accepted += ok
        summary.items_rejected += bad
        summary.items_failed += failed


def item_rows(table: pa.Table, offset_ms: int = 0) -> list[dict[str, Any]]:
    """Catalogue rows for POST /items/batch (attributes parsed, created_at shifted like events)."""
    names = [c for c in ITEM_COLUMNS if c in table.schema.names]
    rows = []
    for row in table.select(names).to_pylist():
        row = {k: v for k, v in row.items() if v is not None}
        if isinstance(row.get("attributes"), str):
            row["attributes"] = json.loads(row["attributes"])
        row["item_id"] = str(row["item_id"])
        if "created_at" in row:
            row["created_at"] = int(row["created_at"]) + offset_ms
        rows.append(row)
    return rows


async def replay_async(
    rows: Iterable[dict[str, Any]], opts: ReplayOptions, items: list[dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReplaySummary:
    """Send the catalogue (if any), then the events; returns the summary."""
    summary = ReplaySummary()
    limits = httpx.Limits(max_connections=opts.lanes + 1, max_keepalive_connections=opts.lanes + 1)
    started = time.perf_counter()
    headers = {"X-API-Key": opts.api_key} if opts.api_key else None
    client = httpx.AsyncClient(base_url=opts.url, timeout=opts.timeout_s, limits=limits,
                               transport=transport, headers=headers)
    async with client:
        sender = _Sender(client, opts, summary, _RateLimiter(opts.rate))
        if items:
            await _replay_items(items, sender, min(opts.batch_size, 1000))
        await _replay_events(rows, sender, opts, progress)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def replay_file(
    events_path: Path, opts: ReplayOptions, items_path: Path | None = None,
    shift_to_now: bool = True, now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """`reco replay FILE`: stream a Parquet event file (and catalogue) through the API."""
    offset = shift_offset_ms(parquet_max(events_path, "timestamp"), now_ms) if shift_to_now else 0
    batches = pq.ParquetFile(events_path).iter_batches(batch_size=10_000)
    items = item_rows(pq.read_table(items_path), offset) if items_path else None
    return asyncio.run(replay_async(event_rows(batches, offset), opts, items, progress))


def replay_table(
    events: pa.Table, opts: ReplayOptions, items: pa.Table | None = None,
    shift_to_now: bool = True, now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """The same for an in-memory table (the demo replays its train split this way)."""
    last = int(np.max(events["timestamp"].to_numpy())) if events.num_rows else 0
    offset = shift_offset_ms(last, now_ms) if shift_to_now and events.num_rows else 0
    rows = event_rows(events.to_batches(max_chunksize=10_000), offset)
    item_list = item_rows(items, offset) if items is not None else None
    return asyncio.run(replay_async(rows, opts, item_list, progress))
