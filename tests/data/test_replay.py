"""Replay: retry and rejection handling (fake transport), then the real ingest API and Kafka."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from reco.data.schema import EVENTS_SCHEMA, write_table
from reco.data.synthetic import SyntheticConfig, generate
from reco.replay import ReplayOptions, event_rows, replay_async, replay_file
from reco.settings import Settings
from reco.stack.health import free_port

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
    reco = [str(Path(sys.executable).with_name("reco")), "replay",
            str(tmp_path / "events.parquet")]

    # Without a key every batch would be refused: the first 401 ends it, exit status 1.
    refused = subprocess.run(reco, env=base, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused: /events/batch: HTTP 401" in " ".join(refused.stdout.split())

    # The API's answers decide the exit status: every event invalid is 3, not 0.
    invalid = tmp_path / "invalid" / "events.parquet"
    invalid.parent.mkdir()
    events = pd.read_parquet(tmp_path / "events.parquet").assign(event_type="like")
    write_table(pa.Table.from_pandas(events, preserve_index=False), invalid, EVENTS_SCHEMA)
    rejected = subprocess.run([*reco[:2], str(invalid)], env={**base, "RECO_API_KEYS": REPLAY_KEY},
                              capture_output=True, text=True, timeout=120)
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr
    assert re.search(r"│ rejected\s+│ 40\s+│", rejected.stdout), rejected.stdout

    # The first of RECO_API_KEYS is the default key.
    sent = subprocess.run(reco, env={**base, "RECO_API_KEYS": f"{REPLAY_KEY},other-key-01234567"},
                          capture_output=True, text=True, timeout=120)
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
