"""Broker stopped: ingest answers 503 (never 202) and recovers by itself once it is back.

A private broker (this module stops it); every event acknowledged before, during or after the
outage is on the topic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from reco.settings import Settings
from reco.topics import ensure_topics
from tests import servers
from tests.realtime.conftest import read_topic
from tests.security.conftest import ingest_client  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_kafka() -> Iterator[servers.ServerProcess]:
    server = servers.start_kafka()
    try:
        yield server
    finally:
        servers.remove(server)


def event(n: int) -> dict:
    return {"event_id": str(uuid.uuid4()), "user_id": f"u{n % 7}", "item_id": f"i{n}",
            "event_type": "view"}


async def test_ingest_is_503_while_the_broker_is_down_and_recovers(
    settings: Settings, private_kafka, ingest_client,  # noqa: F811
) -> None:
    run = settings.model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{private_kafka.port}", "ingest_ack_timeout_s": 2.0,
        "topic_events": f"events-{uuid.uuid4().hex[:8]}"})
    await ensure_topics(run.kafka_bootstrap, {run.topic_events: 3})
    acked: set[str] = set()
    during: list[int] = []
    recovered_after = None
    async with ingest_client(run) as client:
        async def post(n: int) -> int:
            e = event(n)
            response = await client.post("/events", json=e)
            if response.status_code == 202:
                acked.add(e["event_id"])
            else:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == str(run.ingest_retry_after_s)
            return response.status_code

        assert [await post(n) for n in range(20)] == [202] * 20
        private_kafka.stop()
        try:
            for n in range(20, 26):
                during.append(await post(n))
            assert (await client.get("/ready")).status_code == 503
        finally:
            private_kafka.start()
        # No restart of the API: it must come back by itself (deadline, not a timing claim).
        started = time.monotonic()
        n = 100
        while time.monotonic() - started < 90:
            n += 1
            if await post(n) == 202:
                recovered_after = time.monotonic() - started
                break
            await asyncio.sleep(0.5)
        assert recovered_after is not None, "ingest did not recover after the broker came back"
        assert [await post(n) for n in range(200, 220)] == [202] * 20
        batch = await client.post("/events/batch", json={"events": [event(n) for n in
                                                                    range(300, 310)]})
        assert batch.status_code == 202
        acked.update(batch.json()["event_ids"])
    assert during == [503] * len(during)
    on_topic = {orjson.loads(m.value)["event_id"]
                for m in await read_topic(run, run.topic_events, len(acked))}
    assert acked <= on_topic  # every acknowledged event survived the outage
