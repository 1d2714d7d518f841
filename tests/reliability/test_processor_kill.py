"""kill -9 of the processor in the middle of a stream: after a restart the features equal those
of a run without the fault (nothing counted twice, nothing missing)."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
import redis

from reco.settings import Settings
from reco.stack.health import free_port
from tests.realtime.conftest import wait_for
from tests.reliability.conftest import (
    assert_same_features,
    dump,
    make_events,
    process_env,
    produce_fast,
    reference_features,
    seen_count,
    start_process,
)

pytestmark = pytest.mark.integration

N = 3000


async def test_kill9_mid_stream_then_restart_equals_clean_run(
    settings: Settings, redis_client: redis.Redis, redis_server, kafka_topics: dict, tmp_path
) -> None:
    events = make_events(N)
    messages = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    env = process_env(settings, RECO_PROCESSOR_METRICS_PORT=str(free_port()),
                      RECO_CONSUMER_BATCH_MAX="100")  # small batches: a kill lands mid-stream
    first = start_process("processor", env, tmp_path)
    try:
        streaming = asyncio.create_task(_stream(settings, messages))
        await wait_for(lambda: seen_count(redis_client, events) >= N // 4, "first quarter")
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        at_kill = seen_count(redis_client, events)
        await streaming
    finally:
        if first.poll() is None:
            first.kill()
    assert 0 < at_kill < N  # the fault hit the middle of the stream

    second = start_process("processor", {**env, "RECO_PROCESSOR_METRICS_PORT": str(free_port())},
                           tmp_path)
    try:
        await wait_for(lambda: seen_count(redis_client, events) == N, "all events applied")
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    after_fault = dump(redis_client)

    clean = await reference_features(settings, f"redis://127.0.0.1:{redis_server.port}/0", events)
    assert len(clean) > N  # markers plus features of 40 users and 60 items
    assert_same_features(after_fault, clean)


async def _stream(settings: Settings, messages: list) -> None:
    """The events in chunks, as a live stream arrives."""
    for i in range(0, len(messages), 150):
        await produce_fast(settings, messages[i:i + 150])
        await asyncio.sleep(0.1)
