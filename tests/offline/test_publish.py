"""Atomic publish to Redis: readers see a whole version or the previous one, never a mix."""

from __future__ import annotations

import contextlib
import fnmatch
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np
import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.lock import Lock
from redis.retry import Retry

from reco import keys, neighbours
from spark_jobs import publish

ITEMS = [f"item-{i}" for i in range(3000)]


def lists_of(version: str, size: int = 20):
    """Each item's list names the version in every id, so a mixed read is detectable."""
    scores = np.linspace(1.0, 0.5, size, dtype=np.float32)
    for n, item in enumerate(ITEMS):
        ids = [f"{version}/{ITEMS[(n + j) % len(ITEMS)]}" for j in range(1, size + 1)]
        yield keys.item_knn(item, version), neighbours.encode(ids, scores)


def read_lists(client: redis.Redis, sample: list[str]) -> tuple[str | None, list]:
    """What the API does: resolve the serving version, then read that version's keys."""
    version = publish.current_version(client, "item2vec")
    if version is None:
        return None, []
    pipe = client.pipeline(transaction=False)
    for item in sample:
        pipe.get(keys.item_knn(item, version))
    return version, [neighbours.decode(raw)[0] for raw in pipe.execute()]


@pytest.mark.integration
def test_concurrent_reader_sees_whole_old_or_whole_new_version(redis_url):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    sample = ITEMS[::97]
    seen: list[tuple[str, list]] = []
    stop = threading.Event()

    def reader() -> None:
        own = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            seen.append(read_lists(own, sample))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # Small batches: many round trips, so the reader interleaves with the writes.
        result = publish.publish(client, "item2vec", "v2", lists_of("v2"), batch=50,
                                 grace_s=600)
        for _ in range(20):
            seen.append(read_lists(client, sample))
    finally:
        stop.set()
        thread.join()

    versions = [v for v, _ in seen]
    assert "v1" in versions and "v2" in versions
    assert versions.index("v2") > 0 and "v1" not in versions[versions.index("v2"):]
    for version, lists in seen:
        assert len(lists) == len(sample)
        assert all(ids and all(i.startswith(f"{version}/") for i in ids) for ids in lists)
    assert result.keys_written == len(ITEMS) and result.previous == "v1"
    assert result.keys_expiring == len(ITEMS)
    assert 0 < client.ttl(keys.item_knn(ITEMS[0], "v1")) <= 600
    assert client.ttl(keys.item_knn(ITEMS[0], "v2")) == -1
    assert int(client.hget(keys.MODEL_PUBLISHED_AT, "item2vec")) > 0

    third = publish.publish(client, "item2vec", "v3", lists_of("v3"), batch=1000)
    assert third.keys_deleted == len(ITEMS)  # v1, two versions back, is gone at once
    assert client.exists(keys.item_knn(ITEMS[0], "v1")) == 0
    assert client.ttl(keys.item_knn(ITEMS[0], "v2")) > 0


@pytest.mark.integration
def test_failed_publish_leaves_previous_version_serving(redis_url):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    before = read_lists(client, ITEMS[:50])

    def fail_midway(written: int) -> None:
        if written >= 1000:
            raise ConnectionError("injected failure after 1000 keys")

    with pytest.raises(ConnectionError, match="injected"):
        publish.publish(client, "item2vec", "v2", lists_of("v2"), batch=500,
                        after_batch=fail_midway)

    assert read_lists(client, ITEMS[:50]) == before
    assert client.ttl(keys.item_knn(ITEMS[0], "v1")) == -1
    assert list(client.scan_iter(match=keys.version_prefix("knn", "v2"))) == []
    # The next publish goes through normally.
    publish.publish(client, "item2vec", "v3", lists_of("v3"), batch=500)
    assert read_lists(client, ITEMS[:1])[0] == "v3"


@pytest.mark.integration
def test_a_second_publish_of_the_model_waits_for_the_first(redis_url):
    """The DAG and `reco train` at once, v0 serving. Without the lock, v1's publish switched
    while v2's was half written and deleted v2's keys as an old version's; v2's publish then
    switched to what was left of v2 and deleted v1."""
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v0", lists_of("v0"), batch=500)
    v2_writing, v1_done = threading.Event(), threading.Event()

    def pause_once(written: int) -> None:
        if not v2_writing.is_set():
            v2_writing.set()
            v1_done.wait(3)  # v1's publish runs meanwhile, unless it waits for the lock

    def v1() -> None:
        assert v2_writing.wait(10)
        publish.publish(redis.Redis.from_url(redis_url), "item2vec", "v1", lists_of("v1"),
                        batch=500)
        v1_done.set()

    thread = threading.Thread(target=v1)
    thread.start()
    publish.publish(client, "item2vec", "v2", lists_of("v2"), batch=500, after_batch=pause_once)
    thread.join(30)
    assert not thread.is_alive() and v1_done.is_set()

    # v1 published after v2, each whole: v1 serves every list, v2 (the one before) expires,
    # v0 is gone.
    version, lists = read_lists(client, ITEMS)
    assert version == "v1" and all(ids and ids[0].startswith("v1/") for ids in lists)
    assert 0 < client.ttl(keys.item_knn(ITEMS[-1], "v2")) <= 3600
    assert not client.exists(keys.item_knn(ITEMS[-1], "v0"))
    assert not client.exists(keys.publish_lock("item2vec"))


@pytest.mark.integration
def test_a_publish_waits_for_the_lock_no_longer_than_its_timeout(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set(keys.publish_lock("item2vec"), "a crashed publisher's", px=60_000)
    with pytest.raises(TimeoutError, match="another gate or publish of item2vec held"):
        publish.publish(client, "item2vec", "v1", lists_of("v1"), lock_timeout_s=0.3)
    assert publish.current_version(client, "item2vec") is None


@pytest.mark.integration
def test_a_publish_longer_than_the_locks_expiry_keeps_the_lock(redis_url):
    """The lock's expiry was set once, when taken: a publish that outlasted it lost the lock
    half-way, and a second publisher could write and switch beside it."""
    client = redis.Redis.from_url(redis_url)
    others_got_it: list[bool] = []

    def slow_batch(written: int) -> None:
        time.sleep(0.8)  # 7 batches: ~5.6 s under a lock that expires after 2 s
        other = redis.Redis.from_url(redis_url).lock(keys.publish_lock("item2vec"), timeout=5)
        others_got_it.append(other.acquire(blocking=False))

    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500,
                    after_batch=slow_batch, lock_timeout_s=2.0)

    assert others_got_it == [False] * 7
    assert not client.exists(keys.publish_lock("item2vec"))  # released at the end


@pytest.mark.integration
def test_a_publish_that_lost_its_lock_stops_and_leaves_the_keys_alone(redis_url):
    """Its cleanup deleted the version's keys without the lock: those of another attempt of
    the same run, writing the same version under the lock it now held."""
    client = redis.Redis.from_url(redis_url)

    def lock_taken_over(written: int) -> None:
        client.delete(keys.publish_lock("item2vec"))  # expired, then taken by another attempt
        client.lock(keys.publish_lock("item2vec"), timeout=60).acquire(blocking=False)

    with pytest.raises(redis.exceptions.LockNotOwnedError):
        publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500,
                        after_batch=lock_taken_over)
    assert client.exists(keys.item_knn(ITEMS[0], "v1"))


@pytest.mark.integration
def test_a_publish_failing_after_its_lock_was_taken_leaves_the_keys_to_the_new_holder(redis_url):
    """Its cleanup after another failure is fenced too: the keys may be those of another
    attempt writing the same version under the lock it now holds."""
    client = redis.Redis.from_url(redis_url)

    def taken_then_failing(written: int) -> None:
        take_over_lock(client)
        raise RuntimeError("the list source failed")

    with pytest.raises(RuntimeError, match="list source"):
        publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500,
                        after_batch=taken_then_failing)
    assert client.exists(keys.item_knn(ITEMS[0], "v1"))


@pytest.mark.integration
def test_a_publish_failing_before_any_write_keeps_the_new_holders_announcement(redis_url):
    """No key to delete, so no fenced deletion refused: the withdrawal is fenced itself, or
    the announcement of another attempt at the same version would go, and erasures applied
    while it writes would leave that version's lists of the user."""
    client = redis.Redis.from_url(redis_url)

    def failing_lists():
        take_over_lock(client)
        publish.announce(client, "item2vec", "v1")  # the new holder's
        raise RuntimeError("the list source failed")
        yield  # a generator

    with publish.held_lock(client, "item2vec") as lock:
        publish.announce(client, "item2vec", "v1")
        with pytest.raises(RuntimeError, match="list source"):
            publish.publish_locked(client, lock, "item2vec", "v1", failing_lists())
    assert publish.current_publishing(client, "item2vec") == "v1"


def leaving_out(lists, left_out: set[str]):
    """`lists` with these keys' values None (an erased owner's list: publishing deletes it)."""
    for key, value in lists:
        yield key, None if key in left_out else value


def take_over_lock(client: redis.Redis) -> Lock:
    """The publish lock expires (a stalled publisher), then another publisher takes it."""
    client.delete(keys.publish_lock("item2vec"))
    other = client.lock(keys.publish_lock("item2vec"), timeout=60)
    assert other.acquire(blocking=False)
    return other


@pytest.mark.integration
def test_a_publisher_that_stalled_past_its_lock_writes_nothing_more(redis_url):
    """Renewed only after each batch, a stalled publisher's lock expired, another publish of
    the same version left out an erased user's list, then the stalled one wrote a whole batch,
    that list in it, before its renewal failed."""
    client = redis.Redis.from_url(redis_url)
    erased = keys.item_knn(ITEMS[600], "v1")

    def stalled(written: int) -> None:
        if written == 500:
            client.delete(keys.publish_lock("item2vec"))  # expired while A stalled
            publish.publish(redis.Redis.from_url(redis_url), "item2vec", "v1",
                            leaving_out(lists_of("v1"), {erased}), batch=500)

    with pytest.raises(redis.exceptions.LockNotOwnedError):
        publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500,
                        after_batch=stalled)

    assert not client.exists(erased)
    assert read_lists(client, ITEMS[:1])[0] == "v1"
    assert client.exists(keys.item_knn(ITEMS[-1], "v1"))


@pytest.mark.integration
@pytest.mark.parametrize("lost", ["taken", "expired"])
def test_a_lock_lost_between_its_check_and_the_exec_writes_nothing(redis_url, monkeypatch,
                                                                     lost):
    """WATCH: the lock's token matched, then it was taken, or it expired, before EXEC."""
    client = redis.Redis.from_url(redis_url)
    multi = redis.client.Pipeline.multi
    transactions: list[int] = []

    def about_to_expire(written: int) -> None:
        if lost == "expired" and written == 500:
            client.pexpire(keys.publish_lock("item2vec"), 100)

    def losing_the_lock_at_the_second(pipe) -> None:
        transactions.append(1)
        if len(transactions) == 2:  # after the GET of the lock, before the writes and EXEC
            if lost == "taken":
                take_over_lock(redis.Redis.from_url(redis_url))
            else:
                time.sleep(0.2)  # untouched, the lock expires
        multi(pipe)

    monkeypatch.setattr(redis.client.Pipeline, "multi", losing_the_lock_at_the_second)
    with pytest.raises(redis.exceptions.LockNotOwnedError, match="changed before the write"):
        publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500,
                        after_batch=about_to_expire)

    assert client.exists(keys.item_knn(ITEMS[499], "v1"))  # the first transaction's
    assert not any(client.exists(keys.item_knn(item, "v1")) for item in ITEMS[500:1000])


@pytest.mark.integration
def test_a_publisher_that_lost_its_lock_before_the_switch_does_not_switch(redis_url):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    with (publish.held_lock(client, "item2vec") as lock,
          pytest.raises(redis.exceptions.LockNotOwnedError)):
        publish.publish_locked(client, lock, "item2vec", "v2", lists_of("v2"), batch=500,
                               before_switch=lambda: take_over_lock(client))
    assert publish.current_version(client, "item2vec") == "v1"
    assert client.ttl(keys.item_knn(ITEMS[0], "v1")) == -1  # not retired


@pytest.mark.integration
def test_retiring_under_a_lost_lock_expires_and_deletes_nothing(redis_url):
    client = redis.Redis.from_url(redis_url)
    for version in ("v1", "v2", "v3"):
        client.mset(dict(lists_of(version)))
    with publish.held_lock(client, "item2vec") as lock:
        take_over_lock(client)
        with pytest.raises(redis.exceptions.LockNotOwnedError):
            publish.retire_others(client, lock, "item2vec", "v3", "v2", batch=500)
    pipe = client.pipeline(transaction=False)
    for version in ("v1", "v2"):
        for item in ITEMS:
            pipe.ttl(keys.item_knn(item, version))
    assert set(pipe.execute()) == {-1}  # none deleted (-2), none expiring


@pytest.mark.integration
def test_a_client_that_decodes_replies_holds_its_lock_too(redis_url):
    """The fence compares the lock's stored token, a str under decode_responses."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    assert publish.is_serving(client, "item2vec", "v1")


class ExecReplyDropper:
    """A TCP proxy to Redis that loses the reply to the first EXEC sent with `marker` (the
    switch's transaction names `keys.MODEL_VERSIONS`): Redis runs the transaction, then the
    client's connection is reset (what a timeout or a network blip looks like). Later ones,
    a cleanup's, get through."""

    def __init__(self, upstream: tuple[str, int], marker: bytes):
        self.upstream = upstream
        self.marker = marker
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.dropped = threading.Event()  # one reply lost already
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            sent_exec = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, sent_exec),
                             daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, sent_exec),
                             daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, sent_exec) -> None:
        try:
            marked = False  # since the last MULTI: a transaction's commands span reads
            while data := client.recv(65536):
                upper = data.upper()
                if b"MULTI\r\n" in upper:
                    marked = self.marker in data[upper.rindex(b"MULTI\r\n"):]
                else:
                    marked = marked or self.marker in data
                if b"EXEC\r\n" in upper and marked and not self.dropped.is_set():
                    self.dropped.set()
                    sent_exec.set()
                server.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket, sent_exec) -> None:
        replies = b""
        try:
            while data := server.recv(65536):
                if not sent_exec.is_set():
                    client.sendall(data)
                    continue
                replies += data  # +OK / +QUEUED, then EXEC's reply: an array (or an error)
                if b"*" in replies or b"-" in replies:
                    client.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@contextlib.contextmanager
def losing_replies(redis_url: str, marker: bytes) -> Iterator[redis.Redis]:
    """A client whose transactions run in Redis but whose EXEC replies, of transactions sent
    with `marker`, never arrive."""
    url = urlparse(redis_url)
    proxy = ExecReplyDropper((url.hostname, url.port), marker)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, db=int(url.path.strip("/")),
                         retry=Retry(NoBackoff(), 0))
    try:
        yield client
    finally:
        client.close()
        proxy.close()


@pytest.fixture
def lossy_client(redis_url) -> Iterator[redis.Redis]:
    """A client whose switches run in Redis but whose replies never arrive."""
    with losing_replies(redis_url, keys.MODEL_VERSIONS.encode()) as client:
        yield client


@pytest.mark.integration
def test_a_switch_whose_reply_is_lost_keeps_the_new_version_serving(redis_url, lossy_client):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)

    with pytest.raises(redis.ConnectionError):
        publish.publish(lossy_client, "item2vec", "v2", lists_of("v2"), batch=500)

    # Redis switched: v2 serves whole lists, and a retry knows it is already serving.
    version, lists = read_lists(client, ITEMS[:50])
    assert version == "v2" and all(ids and ids[0].startswith("v2/") for ids in lists)
    assert publish.is_serving(client, "item2vec", "v2")
    with pytest.raises(ValueError, match="already the serving version"):
        publish.publish(client, "item2vec", "v2", lists_of("v2"))
    # The lost reply also skipped retiring v1; the retry's retire gives it the grace period.
    old_key = keys.item_knn(ITEMS[0], "v1")
    assert client.ttl(old_key) == -1
    with publish.held_lock(client, "item2vec") as lock:
        assert publish.retire_others(client, lock, "item2vec", "v2", None, batch=500,
                                     grace_s=60) == (len(ITEMS), 0)
    assert 0 < client.ttl(old_key) <= 60 and client.ttl(keys.item_knn(ITEMS[0], "v2")) == -1


@pytest.mark.integration
def test_a_write_whose_reply_is_lost_fails_as_a_connection_error(redis_url):
    """redis-py raises WatchError for a connection lost while watching: taken for a lost lock,
    it left the version's written keys behind under a misleading error."""
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    with (losing_replies(redis_url, b"item:knn:v2:") as lossy,
          pytest.raises(redis.ConnectionError)):
        publish.publish(lossy, "item2vec", "v2", lists_of("v2"), batch=500)
    assert read_lists(client, ITEMS[:1])[0] == "v1"
    assert list(client.scan_iter(match=keys.version_prefix("knn", "v2"))) == []
    assert not client.exists(keys.publish_lock("item2vec"))


@pytest.mark.integration
def test_republishing_the_serving_version_is_refused(redis_url):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    with pytest.raises(ValueError, match="already the serving version"):
        publish.publish(client, "item2vec", "v1", lists_of("v1"))
    assert read_lists(client, ITEMS[:1])[0] == "v1"


@pytest.mark.integration
def test_retiring_again_never_extends_an_old_versions_expiry(redis_url):
    """Every rejected run that finds the champion serving retires the other versions again
    (their previous unknown): each call reset their expiry, so runs closer together than the
    grace period kept old versions for ever."""
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    publish.publish(client, "item2vec", "v2", lists_of("v2"), batch=500, grace_s=3600)
    old = keys.item_knn(ITEMS[0], "v1")
    client.pexpire(old, 5_000)  # most of the grace period gone

    with publish.held_lock(client, "item2vec") as lock:
        publish.retire_others(client, lock, "item2vec", "v2", None, grace_s=3600)

    assert 0 < client.pttl(old) <= 5_000
    assert client.ttl(keys.item_knn(ITEMS[0], "v2")) == -1


@pytest.mark.integration
def test_a_serving_version_whose_lists_are_gone_is_published_again(redis_url):
    client = redis.Redis.from_url(redis_url)
    publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)
    client.unlink(*client.scan_iter(match=keys.version_prefix("knn", "v1")))
    assert not publish.is_serving(client, "item2vec", "v1")

    result = publish.publish(client, "item2vec", "v1", lists_of("v1"), batch=500)

    assert result.keys_written == len(ITEMS) and publish.is_serving(client, "item2vec", "v1")
    version, lists = read_lists(client, ITEMS[:50])
    assert version == "v1" and all(ids[0].startswith("v1/") for ids in lists)


@pytest.mark.integration
def test_a_version_published_before_item_lists_existed_still_counts_as_serving(redis_url):
    """ALS versions published before `model:items` keys have only their lists: serving."""
    client = redis.Redis.from_url(redis_url)
    ids, scores = ["b", "c"], np.array([0.9, 0.8])
    lists = [(keys.item_cf_neighbours("a", "old"), neighbours.encode(ids, scores)),
             (keys.user_cf("u1", "old"), neighbours.encode(ids, scores))]
    publish.publish(client, "als", "old", iter(lists))
    assert not client.exists(keys.model_items("als", "old"))
    assert publish.is_serving(client, "als", "old")


@pytest.mark.integration
def test_users_lists_carry_their_items_numbers_and_the_item_list_retires_with_them(
        redis_url, tmp_path):
    """ALS and SASRec users' lists name each item twice: by id and by its position in the
    version's item list (`keys.model_items`), which the API maps to rows once per version."""
    client = redis.Redis.from_url(redis_url)
    items = np.array(["a", "b", "c", "d"])
    cand_idx = np.array([[2, 0, 3], [1, 3, 0]], dtype=np.int32)
    cand_scores = np.array([[0.9, 0.5, np.nan], [0.8, 0.4, 0.1]], dtype=np.float32)
    np.savez(tmp_path / "model.npz", user_ids=np.array(["u1", "u2"]), item_ids=items,
             cand_idx=cand_idx, cand_scores=cand_scores, nbr_idx=cand_idx[:, :2].repeat(2, 0),
             nbr_scores=cand_scores[:, :2].repeat(2, 0))
    for model, user_key in (("als", keys.user_cf), ("sasrec", keys.user_seq)):
        for version in ("v1", "v2"):
            publish.publish(client, model, version,
                            publish.model_lists(model, tmp_path, version), grace_s=600)
        assert orjson.loads(client.get(keys.model_items(model, "v2"))) == items.tolist()
        ids, scores, codes = neighbours.decode_coded(client.get(user_key("u1", "v2")))
        assert ids == ["c", "a"] and codes.tolist() == [2, 0]  # the NaN score is dropped
        assert scores.tolist() == pytest.approx([0.9, 0.5])
        ids, _, codes = neighbours.decode_coded(client.get(user_key("u2", "v2")))
        assert ids == items[codes].tolist() == ["b", "d", "a"]
        # The retired version's item list expires with its users' lists.
        assert 0 < client.ttl(keys.model_items(model, "v1")) <= 600
        assert client.ttl(keys.model_items(model, "v2")) == -1
    # Item lists carry no numbers (the API caches them parsed across users).
    assert neighbours.decode_coded(client.get(keys.item_cf_neighbours("a", "v2")))[2] is None


def test_codes_must_match_ids() -> None:
    with pytest.raises(ValueError, match="2 ids but 1 codes"):
        neighbours.encode(["a", "b"], [1.0, 0.5], [0])


def test_key_version_inverts_every_versioned_key_builder() -> None:
    built = {"knn": keys.item_knn, "cf_item": keys.item_cf_neighbours, "cf_user": keys.user_cf,
             "seq_user": keys.user_seq,
             "cf_items": lambda _, v: keys.model_items("als", v),
             "seq_items": lambda _, v: keys.model_items("sasrec", v)}
    assert set(built) == {kind for kinds in publish.KINDS.values() for kind in kinds}
    for kind, key_of in built.items():
        for owner in ("u1", "item:with:colons", ""):
            key = key_of(owner, "20240301T020000-ab12cd34")
            assert fnmatch.fnmatchcase(key, keys.version_pattern(kind)), key
            assert keys.key_version(kind, key) == "20240301T020000-ab12cd34"
    with pytest.raises(ValueError, match="is not a 'knn' key"):
        keys.key_version("knn", keys.user_cf("u1", "v1"))
