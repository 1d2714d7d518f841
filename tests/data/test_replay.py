"""Replay: retry and rejection handling (fake transport), then the real ingest API and Kafka."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from reco.data.schema import EVENTS_SCHEMA, DataFileError, write_table
from reco.data.synthetic import SyntheticConfig, generate
from reco.replay import ReplayOptions, ReplayStopped, event_rows, replay_async, replay_file
from reco.replay_rows import (
    Rejected,
    file_has_untimed_rows,
    item_rows,
    json_body,
    last_event_ms,
    read_batches,
    table_has_untimed_rows,
)
from reco.settings import Settings
from reco.stack.health import free_port
from reco.stack.servers import REPO_ROOT
from streaming.archiver import Archiver

BAD_TYPE = "event_type: Input should be 'view', 'click', 'cart' or 'purchase'"


def _rows(n: int) -> list[dict]:
    table = pa.table({"user_id": [f"u{i % 2}" for i in range(n)], "item_id": ["i"] * n,
                      "event_type": ["view"] * n, "timestamp": list(range(1000, 1000 + n))})
    return list(event_rows(table.to_batches(), offset_ms=10))


def test_retries_503_and_connection_errors_and_resends_the_valid_rest() -> None:
    seen: list[list[int]] = []
    script = iter(["503", "connect", "422", "202", "202"])

    def handler(request: httpx.Request) -> httpx.Response:
        step = next(script)
        if step == "connect":
            raise httpx.ConnectError("refused", request=request)
        events = orjson.loads(request.content)["events"]
        seen.append([e["timestamp"] for e in events])
        if step == "503":
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "down"})
        if step == "422":
            return httpx.Response(422, json={"detail": [
                {"loc": ["events", 1, "event_type"], "field": "events.event_type",
                 "reason": "bad", "index": 1}]})
        return httpx.Response(202, json={"event_ids": []})

    opts = ReplayOptions(url="http://ingest", batch_size=3, lanes=1, backoff_s=0.0)
    summary = asyncio.run(replay_async(_rows(5), opts, transport=httpx.MockTransport(handler)))
    assert seen == [[1010, 1011, 1012], [1010, 1011, 1012], [1010, 1012], [1013, 1014]]
    d = summary.to_dict()
    assert (d["sent"], d["accepted"], d["rejected"], d["failed"]) == (5, 4, 1, 0)
    assert (d["requests"], d["retries"], d["rejections"]) == (4, 2, {"event_type: bad": 1})


def test_gives_up_after_max_retries_and_counts_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "broker down"})

    opts = ReplayOptions(url="http://ingest", batch_size=10, lanes=1, backoff_s=0.0,
                         max_retries=2)
    summary = asyncio.run(replay_async(_rows(4), opts, transport=httpx.MockTransport(handler)))
    assert (summary.accepted, summary.failed, summary.requests, summary.retries) == (0, 4, 3, 2)


def _replay_against(handler, rows: int = 4, items: int = 0):
    opts = ReplayOptions(url="http://ingest", batch_size=10, lanes=1, backoff_s=0.0,
                         max_retries=1)
    catalogue = [{"item_id": f"i{n}"} for n in range(items)] or None
    return asyncio.run(replay_async(_rows(rows), opts, catalogue,
                                    transport=httpx.MockTransport(handler)))


def _reject_all(request: httpx.Request) -> httpx.Response:
    return httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "bad"}]})


def test_exit_status_tells_delivered_rejected_and_undelivered_apart() -> None:
    """For a shop's scripts: 0 all accepted, 3 some invalid (a rerun cannot help), 1 some
    undelivered (a rerun may)."""
    accepted = _replay_against(lambda r: httpx.Response(202, json={"event_ids": []}), items=2)
    assert (accepted.accepted, accepted.items_accepted, accepted.exit_status()) == (4, 2, 0)

    rejected = _replay_against(_reject_all)
    assert (rejected.accepted, rejected.rejected, rejected.exit_status()) == (0, 4, 3)

    def items_down(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/items/batch":
            return httpx.Response(503, json={"detail": "down"})
        return httpx.Response(202, json={"event_ids": []})

    items_failed = _replay_against(items_down, items=3)
    d = items_failed.to_dict()
    assert (d["accepted"], d["items_accepted"], d["items_rejected"], d["items_failed"]) == (
        4, 0, 0, 3)
    assert items_failed.exit_status() == 1


@pytest.fixture
def ingest_url(settings: Settings, pg, redis_client, kafka_topics) -> Iterator[str]:
    """The real ingest app under uvicorn on a free loopback port."""
    yield from _serve_ingest(settings)


def _serve_ingest(settings: Settings) -> Iterator[str]:
    from serving.ingest import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "ingest did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


async def _consume(settings: Settings, n: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(settings.topic_events, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.mark.integration
def test_replay_through_real_ingest_keeps_user_order(
    ingest_url: str, settings: Settings, pg, tmp_path: Path
) -> None:
    generate(SyntheticConfig(users=40, items=60, events=3_000, seed=5), tmp_path)
    events = pd.read_parquet(tmp_path / "events.parquet")
    events.loc[1234, "event_type"] = "like"  # one bad event: only it is refused
    write_table(pa.Table.from_pandas(events, preserve_index=False), tmp_path / "events.parquet",
                EVENTS_SCHEMA)
    now = int(time.time() * 1000) - 1_000
    offset = now - int(events["timestamp"].max())

    opts = ReplayOptions(url=ingest_url, batch_size=500, lanes=3)
    summary = replay_file(tmp_path / "events.parquet", opts, tmp_path / "items.parquet",
                          shift_to_now=True, now_ms=now)

    d = summary.to_dict()
    assert (d["sent"], d["accepted"], d["rejected"], d["failed"]) == (3_000, 2_999, 1, 0)
    assert d["rejections"] == {BAD_TYPE: 1}
    assert (d["items_sent"], d["items_accepted"], d["items_rejected"]) == (60, 60, 0)
    assert summary.exit_status() == 3  # `reco replay` tells the script some were invalid
    assert set(d["latency_ms"]) == {"p50", "p95", "p99"}

    good = events.drop(index=1234)
    records = asyncio.run(_consume(settings, len(good)))
    assert len(records) == len(good)
    by_user: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = orjson.loads(rec.value)
        assert rec.key.decode() == value["user_id"]
        by_user[value["user_id"]].append((value["event_id"], value["timestamp"]))
    expected = {
        user: list(zip(g["event_id"], g["timestamp"] + offset, strict=True))
        for user, g in good.groupby("user_id", sort=False)
    }
    assert dict(by_user) == expected  # every event, shifted exactly, in file order per user

    items = pd.read_parquet(tmp_path / "items.parquet").set_index("item_id")
    rows = pg.execute("SELECT item_id, (extract(epoch FROM created_at) * 1000)::bigint, "
                      "category FROM items").fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        i: (int(row.created_at) + offset, row.category) for i, row in items.iterrows()}


REPLAY_KEY = "replay-key-0123456789"


@pytest.fixture
def ingest_with_auth(settings: Settings, pg, redis_client, kafka_topics) -> Iterator[str]:
    """The real ingest app with auth on, as docker-compose runs it."""
    yield from _serve_ingest(settings.model_copy(update={
        "auth_enabled": True, "api_keys": [SecretStr(REPLAY_KEY)]}))


@pytest.mark.integration
def test_replay_sends_the_api_key_and_a_refused_key_stops_it(
    ingest_with_auth: str, settings: Settings, tmp_path: Path
) -> None:
    generate(SyntheticConfig(users=5, items=10, events=40, seed=3), tmp_path)
    base = {**os.environ, "RECO_INGEST_PORT": ingest_with_auth.rsplit(":", 1)[1],
            "RECO_HOST": "127.0.0.1", "RECO_API_KEYS": ""}
    # `python -m` from the checkout under test (the venv's `reco` may be another checkout's).
    reco = [sys.executable, "-m", "reco.cli", "replay", str(tmp_path / "events.parquet")]
    run = functools.partial(subprocess.run, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)

    # Without a key every batch would be refused: the first 401 ends it, exit status 1.
    refused = run(reco, env=base)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused: /events/batch: HTTP 401" in refused.stderr

    # The API's answers decide the exit status: every event invalid is 3, not 0.
    invalid = tmp_path / "invalid" / "events.parquet"
    invalid.parent.mkdir()
    events = pd.read_parquet(tmp_path / "events.parquet").assign(event_type="like")
    write_table(pa.Table.from_pandas(events, preserve_index=False), invalid, EVENTS_SCHEMA)
    rejected = run([*reco[:-1], str(invalid)], env={**base, "RECO_API_KEYS": REPLAY_KEY})
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr
    assert re.search(r"│ rejected\s+│ 40\s+│", rejected.stdout), rejected.stdout

    # The first of RECO_API_KEYS is the default key.
    sent = run(reco, env={**base, "RECO_API_KEYS": f"{REPLAY_KEY},other-key-01234567"})
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert re.search(r"│ accepted\s+│ 40\s+│", sent.stdout), sent.stdout
    assert len(asyncio.run(_consume(settings, 40))) == 40


def test_a_crashing_lane_stops_the_replay_instead_of_hanging() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise ValueError("unexpected")

    opts = ReplayOptions(url="http://ingest", batch_size=1, lanes=1)
    with pytest.raises(ValueError, match="unexpected"):
        asyncio.run(asyncio.wait_for(
            replay_async(_rows(10), opts, transport=httpx.MockTransport(handler)), 10))


T0 = 1_700_000_000_000


def _export(n: int) -> list[dict]:
    """Events as a shop might export them: no event_id column."""
    return [{"user_id": f"u{i % 7}", "item_id": f"i{i % 11}", "event_type": "view",
             "timestamp": T0 + 1000 * i, "context": None} for i in range(n)]


@pytest.mark.integration
def test_replaying_a_file_again_sends_the_same_ids_and_archives_each_event_once(
    ingest_url: str, settings: Settings, pg, tmp_path: Path
) -> None:
    """Rows without an event_id get an id from their content and position: a rerun after an
    exit 1 repeats them, so the archiver (and the processor's markers) count each event once."""
    n = 60
    rows = _export(n)
    rows[7]["context"] = "{not json"  # only this row is refused, with its reason
    rows[31] = dict(rows[30])  # two identical clicks are still two events
    path = tmp_path / "events.parquet"
    # Times as an Arrow timestamp column, Parquet's own type for them.
    pq.write_table(pa.Table.from_pylist(rows).set_column(
        3, "timestamp", pa.array([r["timestamp"] for r in rows], pa.timestamp("ms", "UTC"))),
        path)
    opts = ReplayOptions(url=ingest_url, batch_size=16, lanes=3)
    now = int(time.time() * 1000) - 60_000
    first = replay_file(path, opts, now_ms=now)
    second = replay_file(path, opts, now_ms=now + 30_000)  # another "now": other times

    for summary in (first, second):
        d = summary.to_dict()
        assert (d["sent"], d["accepted"], d["rejected"], d["failed"]) == (n, n - 1, 1, 0)
        assert d["rejections"] == {
            "context: not valid JSON (Expecting property name enclosed in double quotes)": 1}
    records = asyncio.run(_consume(settings, 2 * (n - 1)))
    times: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        value = orjson.loads(rec.value)
        times[value["event_id"]].append(value["timestamp"])
    # Each id once per run, at its row's time shifted by that run; the identical rows apart.
    offset = now - rows[-1]["timestamp"]
    assert sorted(sorted(t) for t in times.values()) == sorted(
        [r["timestamp"] + offset, r["timestamp"] + offset + 30_000]
        for i, r in enumerate(rows) if i != 7)

    async def archive() -> None:
        archiver = Archiver(settings)
        try:
            await archiver(records)
        finally:
            await archiver.close()

    asyncio.run(archive())
    assert pg.execute("SELECT count(*) FROM events").fetchone() == (n - 1,)


@pytest.mark.integration
def test_a_batch_over_the_body_limit_is_sent_in_halves_and_a_lone_giant_is_rejected(
    ingest_url: str, settings: Settings, tmp_path: Path
) -> None:
    """500 valid events with ~3.5 KB contexts make a ~1.9 MB body, over the ingest's 1 MB: the
    halves get through. One event over the limit by itself is rejected, naming the reason."""
    rows = _export(500)
    for i, row in enumerate(rows):
        row["context"] = orjson.dumps({"page": f"p{i}", "note": "x" * 3_500}).decode()
    rows[123]["context"] = orjson.dumps({"note": "y" * 1_100_000}).decode()
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    summary = replay_file(path, ReplayOptions(url=ingest_url, batch_size=500, lanes=1))

    d = summary.to_dict()
    assert (d["sent"], d["accepted"], d["rejected"], d["failed"]) == (500, 499, 1, 0)
    [(reason, count)] = d["rejections"].items()
    assert count == 1 and reason.startswith("event: too large for the API (HTTP 413: body of ")
    assert "over the 1000000 byte limit" in reason
    records = asyncio.run(_consume(settings, 499))
    assert len(records) == 499
    by_partition: dict[int, list[int]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[rec.partition].append(orjson.loads(rec.value)["timestamp"])
    assert all(times == sorted(times) for times in by_partition.values())  # order kept


@pytest.mark.integration
def test_a_wrong_url_stops_the_replay_with_what_the_server_answered(
    ingest_url: str, tmp_path: Path
) -> None:
    """A 404 is no verdict on the events: exit 1 (fix --url, run again), not 3."""
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(_export(30)), path)

    summary = replay_file(path, ReplayOptions(url=f"{ingest_url}/v2", batch_size=10, lanes=2))

    assert isinstance(summary.stopped, ReplayStopped)
    assert f"POST {ingest_url}/v2/events/batch: HTTP 404 Not Found: Not Found" in str(
        summary.stopped)
    assert (summary.accepted, summary.rejected, summary.failed) == (0, 0, 0)
    assert summary.exit_status() == 1


@pytest.mark.integration
def test_events_without_timestamps_are_stamped_by_the_api(
    ingest_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Nothing to shift to now: each event gets the time it arrives."""
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(_export(5)).drop_columns(["timestamp", "context"]), path)
    before = int(time.time() * 1000)

    summary = replay_file(path, ReplayOptions(url=ingest_url), shift_to_now=True)

    assert (summary.accepted, summary.exit_status()) == (5, 0)
    stamps = [orjson.loads(r.value)["timestamp"] for r in asyncio.run(_consume(settings, 5))]
    assert len(stamps) == 5 and all(before <= t <= int(time.time() * 1000) for t in stamps)


def test_undelivered_events_are_reported_with_the_last_failures_cause() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opts = ReplayOptions(url=url, batch_size=10, lanes=1, backoff_s=0.0, max_retries=1)
    summary = asyncio.run(replay_async(_rows(3), opts))
    assert (summary.failed, summary.retries, summary.exit_status()) == (3, 1, 1)
    assert summary.last_failure == (f"POST {url}/events/batch: ConnectError: All connection "
                                    "attempts failed")


def test_an_unreadable_part_of_the_file_stops_the_replay_after_sending_what_came_before(
    tmp_path: Path
) -> None:
    path = tmp_path / "events.parquet"
    # Row groups the size of the replay's read batches: the second one is garbled below.
    pq.write_table(pa.Table.from_pylist(_export(20_000)).drop_columns(["context"]), path,
                   row_group_size=10_000, compression="zstd")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 20:start + column.total_compressed_size - 2] = b"\xab" * (
        column.total_compressed_size - 22)  # the second row group's first column, garbled
    path.write_bytes(bytes(data))
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.extend(e["timestamp"] for e in orjson.loads(request.content)["events"])
        return httpx.Response(202, json={"event_ids": []})

    rows = event_rows(read_batches(pq.ParquetFile(path), path))
    opts = ReplayOptions(url="http://ingest", batch_size=300, lanes=2)
    summary = asyncio.run(replay_async(rows, opts, transport=httpx.MockTransport(handler)))

    assert isinstance(summary.stopped, DataFileError)
    assert str(summary.stopped).startswith(f"{path}: cannot be read past this point (")
    assert sorted(seen) == [T0 + 1000 * i for i in range(10_000)]
    assert (summary.sent, summary.accepted, summary.exit_status()) == (10_000, 10_000, 2)


def test_arrow_timestamp_columns_are_sent_as_epoch_milliseconds(tmp_path: Path) -> None:
    """Parquet's own time type (here microseconds without a zone, read as UTC), truncated."""
    path = tmp_path / "events.parquet"
    times = pa.array([datetime(2026, 1, 1, 0, 0, 0, 123_456), datetime(2026, 1, 2)],
                     pa.timestamp("us"))
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"],
                             "event_type": ["view", "click"], "timestamp": times}), path)
    file = pq.ParquetFile(path)
    assert last_event_ms(file, "f") == 1_767_312_000_000
    rows = list(event_rows(read_batches(file, path), offset_ms=5))
    assert [r["timestamp"] for r in rows] == [1_767_225_600_128, 1_767_312_000_005]


def test_items_created_after_the_last_event_arrive_now_not_in_the_future() -> None:
    """An export's catalogue often has items added after its event log ends: shifted with the
    events, they were dated in the future and refused by the API."""
    items = pa.table({"item_id": ["old", "late"],
                      "created_at": [1_700_000_000_000, 1_700_000_900_000]})
    offset, latest = 5_000, 1_700_000_005_000  # the last event, 1_700_000_000_000, moved here
    rows = item_rows(items, "items", offset, latest)
    assert [r["created_at"] for r in rows] == [1_700_000_005_000, 1_700_000_005_000]
    assert [r["created_at"] for r in item_rows(items, "items", offset)] == [
        1_700_000_005_000, 1_700_000_905_000]  # --keep-time: as they are


@pytest.mark.parametrize("column", ["timestamp", "created_at"])
def test_integer_times_in_epoch_seconds_are_refused_before_sending(tmp_path: Path,
                                                                    column: str) -> None:
    """The shift to now turned a month of epoch seconds into 43 minutes of plausible
    milliseconds, each event passing the API's 1973 floor."""
    seconds = [1_764_000_000, 1_766_592_000]  # 2025-11-24 .. 2025-12-24
    events = {"user_id": ["u", "u"], "item_id": ["a", "b"], "event_type": ["view", "view"],
              "timestamp": [s * 1000 for s in seconds]}
    items = {"item_id": ["a", "b"], "created_at": [s * 1000 for s in seconds]}
    (events if column == "timestamp" else items)[column] = seconds
    pq.write_table(pa.table(events), tmp_path / "events.parquet")
    pq.write_table(pa.table(items), tmp_path / "items.parquet")
    unreachable = ReplayOptions(url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(DataFileError) as refused:
        replay_file(tmp_path / "events.parquet", unreachable, tmp_path / "items.parquet")
    where = tmp_path / ("events.parquet" if column == "timestamp" else "items.parquet")
    assert str(refused.value) == (
        f"{where}: column {column} ends at 1766592000, before 100000000000 (1973-03-03) in "
        "epoch milliseconds: epoch seconds? Multiply them by 1000")


@pytest.mark.integration
def test_values_the_api_takes_but_orjson_does_not_are_replayed(
    ingest_url: str, settings: Settings, pg, tmp_path: Path
) -> None:
    """A context integer past 64 bits (the API takes it) and a decimal price column (as Spark
    writes prices) made the lane die with a TypeError, its whole batch unsent."""
    events, items = tmp_path / "events.parquet", tmp_path / "items.parquet"
    rows = _export(3)
    rows[1]["context"] = '{"n": 18446744073709551616}'
    pq.write_table(pa.Table.from_pylist(rows), events)
    pq.write_table(pa.table({
        "item_id": ["i0", "i1"], "category": ["c", "c"],
        "price": pa.array([Decimal("12.34"), Decimal("5.00")], pa.decimal128(10, 2))}), items)

    summary = replay_file(events, ReplayOptions(url=ingest_url), items)

    assert (summary.accepted, summary.items_accepted, summary.exit_status()) == (3, 2, 0)
    # The standard library's reader: orjson's reads that integer as a float.
    contexts = [json.loads(r.value).get("context") for r in asyncio.run(_consume(settings, 3))]
    assert {"n": 18446744073709551616} in contexts
    assert dict(pg.execute("SELECT item_id, price FROM items").fetchall()) == {
        "i0": Decimal("12.34"), "i1": Decimal("5.00")}


def test_a_rows_json_does_not_depend_on_the_rows_beside_it() -> None:
    """One row past orjson's integers sent the whole batch through the standard library,
    which wrote another row's NaN as a token no JSON reader takes: both rows refused."""
    big, nan = {"context": {"n": 18446744073709551616}}, {"context": {"x": float("nan")}}
    assert json.loads(json_body("events", [big, nan])) == {"events": [big, {"context": {
        "x": None}}]}
    both = list(event_rows(pa.table({
        "user_id": ["u"], "item_id": ["a"], "event_type": ["view"], "timestamp": [T0],
        "context": ['{"n": 18446744073709551616, "x": NaN}']}).to_batches()))
    assert both[0].reason.startswith("context: not representable in JSON")


@pytest.mark.integration
def test_untimed_equal_rows_of_two_files_are_two_events(
    ingest_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Rows without a time are stamped on arrival, so an equal row in another file is another
    event. Its id came from content and position alone: the second file's view got the first
    file's id and was counted as a duplicate, while the replay said accepted."""
    row = {"user_id": "r1", "item_id": "sku-1", "event_type": "view"}
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([row]), first)
    pq.write_table(pa.Table.from_pylist([row, {**row, "item_id": "sku-2"}]), second)
    opts = ReplayOptions(url=ingest_url, batch_size=16, lanes=1)
    for path in (first, second, first):  # the first file sent again keeps its ids
        assert replay_file(path, opts).to_dict()["failed"] == 0
    ids = [orjson.loads(r.value)["event_id"] for r in asyncio.run(_consume(settings, 4))]
    assert len(ids) == 4 and ids[0] == ids[3] and len(set(ids)) == 3


def test_a_file_is_digested_only_when_a_row_may_lack_a_time(tmp_path: Path) -> None:
    """The digest reads the whole file again: not for a file whose every row has a time."""
    timed, nulls, untimed = (tmp_path / f"{n}.parquet" for n in ("timed", "nulls", "untimed"))
    row = {"user_id": "u", "item_id": "a", "event_type": "view"}
    pq.write_table(pa.Table.from_pylist([{**row, "timestamp": T0}] * 3), timed)
    pq.write_table(pa.Table.from_pylist([{**row, "timestamp": T0}, {**row, "timestamp": None}]),
                   nulls)
    pq.write_table(pa.Table.from_pylist([row]), untimed)
    assert [file_has_untimed_rows(pq.ParquetFile(p)) for p in (timed, nulls, untimed)] == [
        False, True, True]
    assert [table_has_untimed_rows(pq.read_table(p)) for p in (timed, nulls, untimed)] == [
        False, True, True]


def test_a_value_json_cannot_carry_rejects_its_row_only() -> None:
    table = pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"],
                      "event_type": ["view", "view"], "timestamp": [T0, T0 + 1],
                      "session_id": pa.array([b"s1", None], pa.binary())})
    rows = list(event_rows(table.to_batches()))
    assert isinstance(rows[0], Rejected)
    assert rows[0].reason.startswith("session_id: not representable in JSON")
    assert rows[1]["item_id"] == "b"
