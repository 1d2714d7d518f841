"""Replay a Parquet event file through the ingest HTTP API, keeping each user's events in order.

Events are read in file order (the data commands write them sorted by time, MovieLens' ties in
`reco.event_order`'s order) and dealt into K lanes by crc32(user_id) % K; each lane sends its
batches one after another, so a user's events never overtake each other, while K requests are
in flight for throughput. 503s and connection errors are retried with backoff (honouring
Retry-After); a 422 rejects only the events it names: they are recorded with their reasons and
the rest of the batch is sent again. A 413 (body over the API's limit) splits the batch in
halves, down to one event, which is then rejected. Any other answer stops the replay
(`ReplayStopped`; `ReplayRefused` for a 401 or 403): no batch would get through. The file's rows
become API rows in `reco.replay_rows`.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from reco.data.schema import DataFileError, shift_offset_ms
from reco.replay_rows import (
    Rejected,
    Row,
    check_events,
    check_items,
    event_rows,
    file_digest,
    file_has_untimed_rows,
    item_rows,
    json_body,
    last_event_ms,
    open_events,
    read_batches,
    read_items,
    table_digest,
    table_has_untimed_rows,
    table_last_ms,
)

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


class ReplayStopped(Exception):
    """The API answered in a way no batch would get past (404: not the ingest API, ...)."""


class ReplayRefused(ReplayStopped):
    """The API refused the requests themselves (401, 403): every batch would be refused."""


@dataclass
class ReplaySummary:
    sent: int = 0  # events read from the file
    accepted: int = 0
    rejected: int = 0  # refused with a 422 or 413, or before sending (not retried)
    failed: int = 0  # given up on after retries (broker down for too long, API gone)
    rejections: Counter[str] = field(default_factory=Counter)  # "field: reason" -> events
    requests: int = 0
    retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    items_sent: int = 0
    items_accepted: int = 0
    items_rejected: int = 0  # refused with a 422 or 413, or before sending
    items_failed: int = 0  # given up on after retries
    last_failure: str | None = None  # why the last request given up on failed
    stopped: ReplayStopped | DataFileError | None = None  # why it ended before the file did

    @property
    def unsent(self) -> int:
        """Events read but never answered for: the replay stopped first."""
        return self.sent - self.accepted - self.rejected - self.failed

    def exit_status(self) -> int:
        """What `reco replay` exits with, for a shop's scripts: 0 when everything sent was
        accepted; 1 when some events or items were not delivered (retries ran out, or the API's
        answers stopped the replay: running again may get them through); 2 when a part of the
        file could not be read; 3 when the API rejected some as invalid (running again would
        not help: the summary lists the reasons)."""
        if isinstance(self.stopped, DataFileError):
            return 2
        if self.stopped or self.failed or self.items_failed:
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
            "failed": self.failed, "unsent": self.unsent,
            "rejections": dict(self.rejections.most_common()),
            "requests": self.requests, "retries": self.retries,
            "latency_ms": self.percentiles(), "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1), "items_sent": self.items_sent,
            "items_accepted": self.items_accepted, "items_rejected": self.items_rejected,
            "items_failed": self.items_failed, "last_failure": self.last_failure,
            "stopped": str(self.stopped) if self.stopped else None,
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


@dataclass
class _Outcome:
    accepted: int = 0
    rejected: int = 0
    failed: int = 0


def _answer(resp: httpx.Response) -> str:
    """What the server said: its JSON `detail` when it has one, else the start of the body."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return detail[:200] if isinstance(detail, str) else resp.text[:200]


class _Sender:
    """One HTTP client shared by the lanes; every request outcome lands in the summary."""

    def __init__(self, client: httpx.AsyncClient, opts: ReplayOptions, summary: ReplaySummary,
                 limiter: _RateLimiter) -> None:
        self.client, self.opts, self.summary, self.limiter = client, opts, summary, limiter

    def _url(self, path: str) -> str:
        return str(self.client.base_url).rstrip("/") + path

    async def _request(self, path: str, body: bytes) -> httpx.Response | None:
        """POST with retries on 5xx/429 and connection errors; None when it gave up."""
        delay = self.opts.backoff_s
        cause = ""
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                self.summary.retries += 1
            started = time.perf_counter()
            try:
                resp = await self.client.post(path, content=body,
                                              headers={"content-type": "application/json"})
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                wait = delay
            else:
                self.summary.requests += 1
                self.summary.latencies_ms.append((time.perf_counter() - started) * 1000)
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                cause = f"HTTP {resp.status_code}: {_answer(resp)}"
                retry_after = _retry_after(resp)
                wait = delay if retry_after is None else retry_after
            await asyncio.sleep(min(wait, self.opts.max_backoff_s * 6))
            delay = min(delay * 2, self.opts.max_backoff_s)
        self.summary.last_failure = f"POST {self._url(path)}: {cause}"
        return None

    async def send(self, path: str, key: str, rows: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Send rows under body key `key`; returns (accepted, rejected, failed)."""
        await self.limiter.acquire(len(rows))
        out = _Outcome()
        await self._send(path, key, rows, out)
        return out.accepted, out.rejected, out.failed

    async def _send(self, path: str, key: str, rows: list[dict[str, Any]], out: _Outcome
                    ) -> None:
        while rows:
            resp = await self._request(path, json_body(key, rows))
            if resp is None:
                out.failed += len(rows)
                return
            if resp.is_success:
                out.accepted += len(rows)
                return
            if resp.status_code == 413 and len(rows) > 1:
                # Over the API's body limit: the halves, one after the other (order kept).
                half = len(rows) // 2
                await self._send(path, key, rows[:half], out)
                await self._send(path, key, rows[half:], out)
                return
            if resp.status_code == 413:
                self.summary.rejections[f"{key.removesuffix('s')}: too large for the API "
                                        f"(HTTP 413: {_answer(resp)})"] += 1
                out.rejected += 1
                return
            if resp.status_code in (401, 403):
                raise ReplayRefused(
                    f"{path}: HTTP {resp.status_code} {resp.text[:200]} (the ingest API's writes "
                    "need one of its RECO_API_KEYS: pass --api-key)")
            if resp.status_code != 422:
                raise ReplayStopped(
                    f"POST {self._url(path)}: HTTP {resp.status_code} {resp.reason_phrase}: "
                    f"{_answer(resp)} (is that the ingest API?)")
            rows = self._reject(resp, rows, out)

    def _reject(self, resp: httpx.Response, rows: list[dict[str, Any]], out: _Outcome
                ) -> list[dict[str, Any]]:
        """Record a 422's rejected rows with their reasons; the rows left to send again."""
        errors = parse_rejection(resp)
        bad: dict[int, str] = {}
        for entry in errors:
            index = _error_index(entry)
            if index is not None and 0 <= index < len(rows):
                bad.setdefault(index, _reason(entry))
        if not bad:  # nothing to single out: the whole batch is refused
            reason = _reason(errors[0]) if errors else f"HTTP 422: {resp.text[:200]}"
            self.summary.rejections[reason] += len(rows)
            out.rejected += len(rows)
            return []
        for reason in bad.values():
            self.summary.rejections[reason] += 1
        out.rejected += len(bad)
        return [row for i, row in enumerate(rows) if i not in bad]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def _replay_events(rows: Iterable[Row], sender: _Sender, opts: ReplayOptions,
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
        try:
            for n, row in enumerate(rows, 1):
                summary.sent += 1
                if isinstance(row, Rejected):
                    summary.rejected += 1
                    summary.rejections[row.reason] += 1
                    if progress:
                        progress(1)
                    continue
                k = zlib.crc32(str(row.get("user_id", "")).encode()) % opts.lanes
                buffers[k].append(row)
                if len(buffers[k]) >= opts.batch_size:
                    await put(k, buffers[k])
                    buffers[k] = []
                elif n % 5000 == 0:
                    await asyncio.sleep(0)  # let lanes run while a long file is being read
        except DataFileError as exc:
            summary.stopped = exc  # the rows read before the unreadable part are still sent
        for k, buffer in enumerate(buffers):
            if buffer:
                await put(k, buffer)
            await put(k, None)
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()


async def _replay_items(rows: list[Row], sender: _Sender, batch_size: int) -> None:
    summary = sender.summary
    summary.items_sent += len(rows)
    valid = []
    for row in rows:
        if isinstance(row, Rejected):
            summary.items_rejected += 1
            summary.rejections[row.reason] += 1
        else:
            valid.append(row)
    for start in range(0, len(valid), batch_size):
        ok, bad, failed = await sender.send("/items/batch", "items",
                                            valid[start:start + batch_size])
        summary.items_accepted += ok
        summary.items_rejected += bad
        summary.items_failed += failed


async def replay_async(
    rows: Iterable[Row], opts: ReplayOptions, items: list[Row] | None = None,
    progress: Callable[[int], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReplaySummary:
    """Send the catalogue (if any), then the events; returns the summary (with the reason in
    `stopped` when the API's answers or an unreadable part of the file ended it early)."""
    summary = ReplaySummary()
    limits = httpx.Limits(max_connections=opts.lanes + 1, max_keepalive_connections=opts.lanes + 1)
    started = time.perf_counter()
    headers = {"X-API-Key": opts.api_key} if opts.api_key else None
    client = httpx.AsyncClient(base_url=opts.url, timeout=opts.timeout_s, limits=limits,
                               transport=transport, headers=headers)
    async with client:
        sender = _Sender(client, opts, summary, _RateLimiter(opts.rate))
        try:
            if items:
                await _replay_items(items, sender, min(opts.batch_size, 1000))
            await _replay_events(rows, sender, opts, progress)
        except ReplayStopped as exc:
            summary.stopped = exc
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _shift(last_ms: int | None, shift_to_now: bool, now_ms: int | None
           ) -> tuple[int, int | None]:
    """The offset to add to every time, and where it puts the last event (None: no shift).
    Without any timestamp there is nothing to shift: the API stamps each event on arrival."""
    if not shift_to_now or last_ms is None:
        return 0, None
    offset = shift_offset_ms(last_ms, now_ms)
    return offset, last_ms + offset


def replay_file(
    events_path: Path, opts: ReplayOptions, items_path: Path | None = None,
    shift_to_now: bool = True, now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """`reco replay FILE`: stream a Parquet event file (and catalogue) through the API.
    Raises `DataFileError` before sending anything when a file or column is unusable."""
    file = open_events(events_path)
    catalogue = read_items(items_path) if items_path else None
    offset, latest = _shift(last_event_ms(file, str(events_path)), shift_to_now, now_ms)
    # The digest reads the whole file again: only when a row may lack a time, before sending.
    source = file_digest(events_path) if file_has_untimed_rows(file) else ""
    rows = event_rows(read_batches(file, events_path), offset, source)
    items = (item_rows(catalogue, str(items_path), offset, latest) if catalogue is not None
             else None)
    return asyncio.run(replay_async(rows, opts, items, progress))


def replay_table(
    events: pa.Table, opts: ReplayOptions, items: pa.Table | None = None,
    shift_to_now: bool = True, now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """The same for an in-memory table (the demo replays its train split this way)."""
    check_events(events.schema, "events table")
    if items is not None:
        check_items(items.schema, "items table")
    offset, latest = _shift(table_last_ms(events, "events table"), shift_to_now, now_ms)
    source = table_digest(events) if table_has_untimed_rows(events) else ""
    rows = event_rows(events.to_batches(max_chunksize=10_000), offset, source)
    item_list = (item_rows(items, "items table", offset, latest) if items is not None
                 else None)
    return asyncio.run(replay_async(rows, opts, item_list, progress))
