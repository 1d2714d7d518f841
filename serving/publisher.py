"""Publishing events to Kafka for the ingest API: acks=all, idempotent, key = user_id.

The producer is librdkafka's (confluent-kafka): `produce()` only queues a message; librdkafka's
own threads (C, no GIL) batch, send, retry and reconnect. Its delivery reports are served on
the event loop by `poll(0)` every millisecond while a request waits (every POLL_IDLE_S
otherwise), and in every publish(), so a request's future is resolved on the thread that
awaits it: no Python thread of ours competes with the loop for the GIL (a version with a poll
thread handing reports over with call_soon_threadsafe measured slower).

The API answers 202 only after every message of the request was acknowledged; a delivery
error, or no ack within `settings.ingest_ack_timeout_s` (checked by the poll), becomes
`BrokerUnavailable` (HTTP 503), except a message over the size limit: `EventTooLarge` (HTTP 413;
a retry cannot succeed). Both carry the request's event ids: some of its events may have been
published, and a retry with the same ids is deduplicated downstream. The producer is created
at start whether the broker is up or not and reconnects by itself when it comes back; after a
fatal error (an idempotence state librdkafka cannot continue from) it is replaced by a new one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from reco.erasure import Erasure
from reco.events import Event
from reco.settings import Settings

log = logging.getLogger(__name__)
LIBRDKAFKA_LOG = logging.getLogger(__name__ + ".librdkafka")

POLL_BUSY_S = 0.001  # delivery reports are looked for this often while a request waits
POLL_IDLE_S = 0.1  # and this often otherwise (librdkafka's errors and logs)
# A fatal error that keeps coming back (say, the broker refusing the idempotent producer)
# replaces the producer at most this often; meanwhile requests get 503 at once.
REPLACE_EVERY_S = 5.0
ERROR_LOG_EVERY_S = 60.0  # the same broker error (a refused reconnect) logged once a minute
# librdkafka's batching delay: 1 ms makes fewer, fuller produce requests under load (less CPU
# in librdkafka and in the broker per event than 0-0.5 ms, measured on the benchmark's broker)
# for at most 1 ms more latency. librdkafka sends one partition per produce request.
LINGER_MS = 1.0


Message = Event | Erasure  # what goes on the events topic, keyed by user id


class PublishFailed(Exception):
    """Not every event of a request was acknowledged; `event_ids` are all of the request's."""

    def __init__(self, reason: str, event_ids: Sequence[str]) -> None:
        super().__init__(reason)
        self.event_ids = list(event_ids)


class BrokerUnavailable(PublishFailed):
    """The broker did not acknowledge: the client must retry (with the same event ids)."""


class EventTooLarge(PublishFailed):
    """An event is over the message size limit: retrying the same request cannot succeed."""


class _Request:
    """The acks one publish() waits for; `delivered` is librdkafka's callback, once a message."""

    __slots__ = ("future", "remaining", "error", "deadline")

    def __init__(self, future: asyncio.Future[None], n: int, deadline: float) -> None:
        self.future = future
        self.remaining = n
        self.error: KafkaError | str | None = None
        self.deadline = deadline

    def delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def not_sent(self, n: int, reason: KafkaError | str) -> None:
        """`n` messages were not produced: they will never report."""
        if self.error is None:
            self.error = reason
        self.remaining -= n
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


def producer_config(settings: Settings) -> dict[str, Any]:
    timeout_ms = max(int(settings.ingest_ack_timeout_s * 1000), 1000)
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "reco-ingest",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": LINGER_MS,
        # Java's (and aiokafka's) partitioner: a user's events stay on the partition they
        # went to before, whichever client produced them.
        "partitioner": "murmur2_random",
        # An un-acked message fails in librdkafka about when its request answers 503, so the
        # queue does not fill up with messages nobody waits for while the broker is down.
        "message.timeout.ms": timeout_ms,
        "socket.connection.setup.timeout.ms": timeout_ms,
        "reconnect.backoff.max.ms": 2000,
        # Errors and worse: its connection failures also reach error_cb, which logs them.
        "log_level": 3,
    }


class BrokerCheck(NamedTuple):
    """Readiness of the publishing side (`Publisher.check`)."""

    broker: bool  # a metadata round trip succeeded
    topic: bool  # the events topic is there, with a partition leader


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_events
        self.timeout_s = settings.ingest_ack_timeout_s
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.TimerHandle | None = None
        self._waiting = 0  # publish() calls awaiting acks: the poll is busy while > 0
        # Requests of this loop iteration, produced together right after it (call_soon): one
        # burst of produce() calls and one wake-up of librdkafka's thread instead of one each.
        self._outbox: list[tuple[Sequence[Message], _Request]] = []
        # The same requests in deadline order (one timeout for all): the poll fails those
        # past it. Cheaper than an asyncio.timeout() per request (~15 us each).
        self._deadlines: deque[_Request] = deque()
        self._fatal = False
        self.replace_every_s = REPLACE_EVERY_S
        self._replaced_at = -math.inf  # loop time of the last replacement
        # librdkafka said every broker is down; cleared by the next acknowledged request.
        # It only words the 503: requests still wait for acks, which come once it is back.
        self._down = False
        self._last_error: tuple[int | None, float] = (None, 0.0)

    def _new_producer(self) -> Producer:
        return Producer(producer_config(self.settings), error_cb=self._on_error,
                        logger=LIBRDKAFKA_LOG)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's global errors. It recovers from all but fatal ones by itself."""
        if err.fatal():
            log.error("fatal producer error, replacing the producer: %s", err.str())
            self._fatal = True
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = True
        now = time.monotonic()
        if err.code() != self._last_error[0] or now - self._last_error[1] > ERROR_LOG_EVERY_S:
            self._last_error = (err.code(), now)
            log.warning("producer: %s", err.str())

    async def start(self) -> None:
        """Create the producer and connect if the broker answers (so the first request does
        not wait for it); if it does not, the producer keeps trying by itself."""
        self._loop = asyncio.get_running_loop()
        self._producer = self._new_producer()
        self._poller = self._loop.call_later(POLL_IDLE_S, self._poll)
        broker, topic = await self.check()
        if not broker:
            log.warning("broker %s not reachable yet; the producer keeps trying",
                        self.settings.kafka_bootstrap)
        elif not topic:
            log.warning("topic %r missing or leaderless on %s: events answer 503 until "
                        "it is there (`reco topics create`)", self.topic,
                        self.settings.kafka_bootstrap)

    def _poll(self) -> None:
        """Serve delivery reports (resolving requests) and errors, fail requests past their
        deadline; schedule the next poll whatever happens (it is what ends every request)."""
        try:
            self._producer.poll(0)
            if self._fatal and self._loop.time() - self._replaced_at >= self.replace_every_s:
                self._replace()
        except Exception:  # noqa: BLE001 - a callback's error must not stop the polling
            log.exception("serving producer callbacks failed")
        finally:
            self._expire()
            self._poller = self._loop.call_later(
                POLL_BUSY_S if self._waiting else POLL_IDLE_S, self._poll)

    def _expire(self) -> None:
        deadlines, now = self._deadlines, self._loop.time()
        while deadlines:
            request = deadlines[0]
            if not request.future.done():
                if request.deadline > now:
                    break
                request.error = f"no ack within {self.timeout_s} s"
                request.future.set_result(None)
            deadlines.popleft()

    def _wake_poller(self) -> None:
        """A request waits: poll soon rather than at the end of an idle interval."""
        poller = self._poller
        if poller is not None and poller.when() - self._loop.time() > POLL_BUSY_S:
            poller.cancel()
            self._poller = self._loop.call_later(POLL_BUSY_S, self._poll)

    def _replace(self) -> None:
        """After a fatal error: fail what the old producer holds (503), start a new one."""
        old = [self._producer]  # the only reference, so it can be dropped off the loop
        self._producer = self._new_producer()
        old[0].purge()
        old[0].poll(0)  # serves the purge's delivery reports here, on the loop
        # Cleared only now: a late fatal report of the old producer, served by that poll,
        # must not replace the new one.
        self._fatal = False
        self._replaced_at = self._loop.time()
        # Destroying a producer joins its threads: not on the loop (destroy serves no
        # callbacks; a request whose report is lost there fails at its deadline).
        self._loop.run_in_executor(None, old.clear)

    async def stop(self) -> None:
        """Serve the reports of what is still queued (bounded), then stop polling; a request
        still waiting then (its ack not come) fails with 503 instead of waiting forever."""
        producer = self._producer
        if producer is None:
            return
        deadline = time.monotonic() + self.timeout_s
        while len(producer) and time.monotonic() < deadline:
            producer.poll(0)
            await asyncio.sleep(0.01)
        if self._poller is not None:
            self._poller.cancel()
        self._producer = self._poller = None
        while self._deadlines:  # nothing will poll or expire them any more
            request = self._deadlines.popleft()
            if not request.future.done():
                request.error = "publisher stopped before the broker acknowledged"
                request.future.set_result(None)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def publish(self, events: Sequence[Message]) -> None:
        """Send every event (or erasure), then wait for all acks; raises PublishFailed on any
        failure."""
        if self._producer is None:
            raise BrokerUnavailable("publisher not started", _ids(events))
        loop = self._loop
        future = loop.create_future()
        request = _Request(future, len(events), loop.time() + self.timeout_s)
        if not self._outbox:
            loop.call_soon(self._produce_outbox)
        self._outbox.append((events, request))
        self._deadlines.append(request)
        self._waiting += 1
        if self._waiting == 1:
            self._wake_poller()
        try:
            await future
        finally:
            self._waiting -= 1
        if request.error is not None:
            raise self._failure(request.error, events)
        self._down = False

    def _produce_outbox(self) -> None:
        outbox, self._outbox = self._outbox, []
        producer, topic = self._producer, self.topic
        if producer is None:
            for events, request in outbox:
                request.not_sent(len(events), "publisher stopped")
            return
        producer.poll(0)  # under load, reports of earlier requests are served here
        for events, request in outbox:
            if request.future.done():  # cancelled (client gone): nothing was acknowledged
                continue
            delivered = request.delivered
            for k, e in enumerate(events):
                try:
                    producer.produce(topic, e.to_json_bytes(), e.user_id.encode(),
                                     headers=e.kafka_headers, on_delivery=delivered)
                except (BufferError, KafkaException) as exc:  # queue full, fatal state, too large
                    request.not_sent(len(events) - k, _too_large(exc) or
                                     f"broker did not take the events: {exc!r}")
                    break
                except Exception as exc:  # noqa: BLE001 - fail this request, not the others
                    log.exception("producing a request's events failed")
                    request.not_sent(len(events) - k, f"events not produced: {exc!r}")
                    break

    def _failure(self, error: KafkaError | str, events: Sequence[Message]) -> PublishFailed:
        if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            return EventTooLarge(f"an event is over the broker's message size limit: "
                                 f"{error.str()}", _ids(events))
        reason = error if isinstance(error, str) else f"broker did not acknowledge: {error.str()}"
        return BrokerUnavailable("broker not connected" if self._down else reason, _ids(events))

    async def check(self) -> BrokerCheck:
        """Readiness: whether a metadata round trip to the broker succeeds, and whether it
        shows the events topic with a partition leader to write to (without the topic, every
        event waited `ingest_ack_timeout_s` for a 503: deleted, or not created yet). One led
        partition is enough: a leader election elsewhere delays only the users it holds, and
        every replica failing its probe at once would refuse them all."""
        producer = self._producer
        if producer is None:
            return BrokerCheck(False, False)
        try:
            # No topic named: asking about one can make the broker auto-create it.
            meta = await asyncio.to_thread(producer.list_topics, None, 2.0)
        except KafkaException:
            return BrokerCheck(False, False)
        topic = meta.topics.get(self.topic)
        led = (topic is not None and topic.error is None
               and any(p.leader >= 0 for p in topic.partitions.values()))
        return BrokerCheck(bool(meta.brokers), led)


def _ids(events: Sequence[Message]) -> list[str]:
    return [e.message_id for e in events]


def _too_large(exc: Exception) -> KafkaError | None:
    """produce()'s size refusal (librdkafka checks message.max.bytes before queueing)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        return error
    return None
