"""Publish a model's lists to Redis atomically: versioned keys, then one switch.

All of a version's keys are written first (batches of small transactions); a single
MULTI then points `keys.MODEL_VERSIONS[model]` at the new version and stamps
`keys.MODEL_PUBLISHED_AT`. Readers resolve the version first, so they never see half a
version. A failure before the switch deletes what was written and leaves the previous version
serving; a switch that ran but whose reply was lost leaves the new version serving, keys kept.
After the switch the previous version expires after a grace period and older ones (including
leftovers of crashed publishes) are deleted.

The lists' writes, the switch and the retiring of old versions are fenced by the model's
publish lock (`_fenced`): each transaction takes effect only if this publisher still holds the
lock when Redis runs it. A publisher that stalled past the lock's expiry while another took it
writes nothing more; otherwise it could write back, for instance, an erased user's list that
the other publish left out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import redis
from redis.lock import Lock

from reco import keys, neighbours

if TYPE_CHECKING:
    from psycopg import Connection

# The publish lock's expiry, renewed after every batch, and how long another publish waits for
# it: ~20 s publish 100,000 lists here; a crashed publisher's lock expires after it.
PUBLISH_LOCK_S = 900.0
# Most commands in one fenced transaction. Redis runs a transaction's commands back to back,
# serving no other client meanwhile: EXEC of 5,000 SETs of 1.6 KB lists held it ~10 ms (p99
# ~19 ms), of 500 ~0.6 ms (p99 ~3 ms) (benchmarks/reports/publish_fence.md). Callers' `batch`
# stays the lists between renewals (and `after_batch`), fenced in transactions of this size.
FENCE_BATCH = 500
# Which key kinds (keys.version_prefix) each model publishes.
KINDS = {"item2vec": ("knn",), "als": ("cf_item", "cf_user", "cf_items"),
         "sasrec": ("seq_user", "seq_items")}


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: str
    previous: str | None
    keys_written: int
    keys_expiring: int
    keys_deleted: int
    seconds: float


def _lists(ids: np.ndarray, idx: np.ndarray, scores: np.ndarray, key_of: Callable[[str], str],
           targets: np.ndarray, with_codes: bool = False,
           left_out: Container[str] = frozenset()) -> Iterator[tuple[str, bytes | None]]:
    """One list per owner, None for those `left_out`; `with_codes` adds the targets' positions in
    `targets` (users' lists: the API maps the model's item list once instead of each list's
    ids)."""
    targets_list = targets.tolist()
    # float64 rounded to 6 digits serialises short (float32 -> float prints ~17 digits).
    rounded = np.round(scores.astype(np.float64), 6)
    for row, owner in enumerate(ids.tolist()):
        if owner in left_out:
            yield key_of(owner), None  # deleted: an earlier publish of the version wrote it
            continue
        ok = np.isfinite(rounded[row])
        picked = idx[row][ok]
        yield key_of(owner), neighbours.encode(
            [targets_list[j] for j in picked], rounded[row][ok], picked if with_codes else None)


def model_lists(model: str, model_dir: Path, version: str,
                left_out_users: Container[str] = frozenset()
                ) -> Iterator[tuple[str, bytes | None]]:
    """(key, value) of every list a trained model publishes; value None for the lists of
    `left_out_users` (erased: spark_jobs/erased_users.py), which publishing deletes."""
    with np.load(model_dir / "model.npz") as data:
        arrays = {name: data[name] for name in data.files}
    items = arrays["item_ids"]
    if model == "item2vec":
        yield from _lists(items, arrays["nbr_idx"], arrays["nbr_scores"],
                          lambda i: keys.item_knn(i, version), items)
    elif model == "als":
        yield from _lists(items, arrays["nbr_idx"], arrays["nbr_scores"],
                          lambda i: keys.item_cf_neighbours(i, version), items)
        yield keys.model_items(model, version), orjson.dumps(items.tolist())
        yield from _lists(arrays["user_ids"], arrays["cand_idx"], arrays["cand_scores"],
                          lambda u: keys.USER_LISTS[model](u, version), items, with_codes=True,
                          left_out=left_out_users)
    elif model == "sasrec":
        yield keys.model_items(model, version), orjson.dumps(items.tolist())
        yield from _lists(arrays["user_ids"], arrays["cand_idx"], arrays["cand_scores"],
                          lambda u: keys.USER_LISTS[model](u, version), items, with_codes=True,
                          left_out=left_out_users)
    else:
        raise ValueError(f"unknown model {model!r}")


def delete_user_lists(client: redis.Redis, model: str, version: str,
                      users: Iterable[str]) -> int:
    """Delete these users' lists of one published version (erased users)."""
    key_of = keys.USER_LISTS.get(model)
    found = [key_of(user, version) for user in users] if key_of else []
    return client.unlink(*found) if found else 0


def _versions(client: redis.Redis, kinds: tuple[str, ...]) -> dict[str, list[str]]:
    """Every key of every version of these kinds, grouped by version (one SCAN per kind)."""
    found: dict[str, list[str]] = {}
    for kind in kinds:
        for key in client.scan_iter(match=keys.version_pattern(kind), count=10_000):
            key = key.decode() if isinstance(key, bytes) else key
            found.setdefault(keys.key_version(kind, key), []).append(key)
    return found


def _delete_version(client: redis.Redis, lock: Lock, kinds: tuple[str, ...], version: str,
                    batch: int) -> int:
    """Delete `version`'s keys, fenced: another publisher of the same version may hold the lock
    now (LockNotOwnedError, and its keys stay)."""
    deleted = 0
    for kind in kinds:
        chunk: list[str] = []
        for key in client.scan_iter(match=keys.version_prefix(kind, version), count=10_000):
            chunk.append(key)
            if len(chunk) >= batch:
                deleted += sum(_fenced(client, lock, [("UNLINK", k) for k in chunk]))
                chunk = []
        if chunk:
            deleted += sum(_fenced(client, lock, [("UNLINK", k) for k in chunk]))
    return deleted


def current_version(client: redis.Redis, model: str) -> str | None:
    value = client.hget(keys.MODEL_VERSIONS, model)
    return value.decode() if isinstance(value, bytes) else value


def _has_keys(client: redis.Redis, kinds: tuple[str, ...], version: str) -> bool:
    """Every kind of list the model publishes has at least one key of `version`. The model's
    item list (one exact key) is not required: versions published before it existed lack it
    and still serve."""
    patterns = [keys.version_prefix(kind, version) for kind in kinds]
    return all(next(client.scan_iter(match=pattern, count=10_000), None) is not None
               for pattern in patterns if pattern.endswith("*"))


def is_serving(client: redis.Redis, model: str, version: str) -> bool:
    """`version` is the serving version and its lists are in Redis (none lost or deleted)."""
    return current_version(client, model) == version and _has_keys(client, KINDS[model], version)


@contextlib.contextmanager
def held_lock(client: redis.Redis, model: str,
              timeout_s: float = PUBLISH_LOCK_S) -> Iterator[Lock]:
    """Hold `keys.publish_lock(model)`: one gate, publish (or retire) of `model` at a time, a
    second waits up to `timeout_s`. Long work renews it between batches (`renew`)."""
    lock = client.lock(keys.publish_lock(model), timeout=timeout_s, blocking_timeout=timeout_s)
    if not lock.acquire():
        raise TimeoutError(f"another gate or publish of {model} held "
                           f"{keys.publish_lock(model)} for {timeout_s:.0f} s")
    try:
        yield lock
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile
            lock.release()


def renew(lock: Lock) -> None:
    """Reset the lock's expiry to its full timeout; LockNotOwnedError if it expired and another
    publisher may hold it (then stop: `_fenced` would refuse every further write anyway)."""
    lock.reacquire()


def _fenced(client: redis.Redis, lock: Lock, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run `commands` (`("SET", key, value)`...) in MULTI/EXEC transactions of up to
    FENCE_BATCH, each only if `lock` is still this publisher's when Redis runs it, and return
    their replies. LockNotOwnedError, that transaction written not at all, if it is not."""
    replies: list[Any] = []
    for lo in range(0, len(commands), FENCE_BATCH):
        with client.pipeline(transaction=True) as pipe:
            try:
                # EXEC fails if the lock's key is written, deleted or expires after WATCH,
                # our own renewal (PEXPIRE) included: `renew` runs only between calls.
                pipe.watch(lock.name)
                stored = pipe.get(lock.name)
                if isinstance(stored, str):  # a client with decode_responses
                    stored = stored.encode()
                if stored is None or stored != lock.local.token:
                    raise redis.exceptions.LockNotOwnedError(
                        f"{lock.name} expired or another publisher holds it")
                pipe.multi()
                for command in commands[lo:lo + FENCE_BATCH]:
                    pipe.execute_command(*command)
                replies += pipe.execute()
            except redis.exceptions.WatchError as e:
                # redis-py raises WatchError for a connection lost while watching too; EXEC may
                # have run then (a lost reply): raise the connection's error, as unfenced.
                lost = e.__context__
                if isinstance(lost, redis.ConnectionError | redis.TimeoutError):
                    raise lost from None
                raise redis.exceptions.LockNotOwnedError(
                    f"{lock.name} changed before the write ran") from e
    return replies


def _write(client: redis.Redis, lock: Lock, lists: Iterator[tuple[str, bytes | None]],
           batch: int, after_batch: Callable[[int], None] | None) -> int:
    """SET every list (UNLINK those None), `batch` at a time, each batch fenced, then the lock
    renewed and `after_batch(lists written so far)` run. Returns how many lists."""
    written = 0
    pending: list[tuple[Any, ...]] = []
    for key, value in lists:
        pending.append(("UNLINK", key) if value is None else ("SET", key, value))
        if len(pending) >= batch:
            _fenced(client, lock, pending)
            written += len(pending)
            pending = []
            renew(lock)
            if after_batch:
                after_batch(written)
    _fenced(client, lock, pending)
    written += len(pending)
    renew(lock)
    if after_batch:
        after_batch(written)
    return written


def publish(client: redis.Redis, model: str, version: str,
            lists: Iterator[tuple[str, bytes | None]], batch: int = 5000,
            grace_s: int = 3600,
            after_batch: Callable[[int], None] | None = None,
            lock_timeout_s: float = PUBLISH_LOCK_S) -> PublishResult:
    """Write every list of `version`, switch to it, then retire older versions, holding the
    model's publish lock (`held_lock`).

    `after_batch(keys_written_so_far)` runs after each batch of `batch` lists (progress; tests
    inject failures through it).
    """
    with held_lock(client, model, lock_timeout_s) as lock:
        return publish_locked(client, lock, model, version, lists, batch, grace_s, after_batch)


def announce(client: redis.Redis, model: str, version: str) -> None:
    """Say that `version` is being written (`keys.MODEL_PUBLISHING`): from here on, a user's
    erasure deletes the user's lists of it too. Its switch, or its failure, ends that."""
    client.hset(keys.MODEL_PUBLISHING, model, version)


def withdraw(client: redis.Redis, lock: Lock, model: str, version: str) -> None:
    """End `announce` of a publish that stopped before its switch (best effort: a stale entry
    only makes erasures delete lists that do not exist). Fenced: with the lock lost, the entry
    may be another attempt's at the same version, whose erasures must keep deleting."""
    with contextlib.suppress(redis.RedisError):  # LockNotOwnedError too
        if current_publishing(client, model) == version:
            _fenced(client, lock, [("HDEL", keys.MODEL_PUBLISHING, model)])


def current_publishing(client: redis.Redis, model: str) -> str | None:
    value = client.hget(keys.MODEL_PUBLISHING, model)
    return value.decode() if isinstance(value, bytes) else value


def publish_locked(client: redis.Redis, lock: Lock, model: str, version: str,
                   lists: Iterator[tuple[str, bytes | None]], batch: int = 5000,
                   grace_s: int = 3600,
                   after_batch: Callable[[int], None] | None = None,
                   before_switch: Callable[[], None] | None = None) -> PublishResult:
    """`publish` for a caller that holds the model's lock (`held_lock`) and checked, under it,
    that `version` is still the one to serve. `before_switch` runs once every list is
    written."""
    started = time.perf_counter()
    kinds = KINDS[model]
    previous = current_version(client, model)
    # Pointed at but without its lists (lost or deleted), the version is written again.
    if previous == version and _has_keys(client, kinds, version):
        raise ValueError(f"{model} version {version} is already the serving version")
    try:
        written = _write(client, lock, lists, batch, after_batch)
        if before_switch:
            before_switch()
        _fenced(client, lock, [("HSET", keys.MODEL_VERSIONS, model, version),
                               ("HSET", keys.MODEL_PUBLISHED_AT, model, int(time.time())),
                               ("HDEL", keys.MODEL_PUBLISHING, model)])
    except redis.exceptions.LockNotOwnedError:
        raise  # another publisher may hold the lock and be writing this version: leave it
    except BaseException:
        # The switch may have run with its reply lost (timeout, reset): `version` is then
        # serving and its keys must stay. When Redis cannot say, they stay too (a later publish
        # deletes leftovers).
        try:
            serving = current_version(client, model)
        except redis.RedisError:
            serving = version
        if serving != version:
            # Lost meanwhile: the keys and the announcement may be another publisher's now.
            with contextlib.suppress(redis.exceptions.LockNotOwnedError):
                _delete_version(client, lock, kinds, version, batch)
                withdraw(client, lock, model, version)
        raise
    expiring, deleted = retire_others(client, lock, model, version, previous, batch, grace_s)
    return PublishResult(model, version, previous, written, expiring, deleted,
                         time.perf_counter() - started)


def retire_others(client: redis.Redis, lock: Lock, model: str, version: str,
                  previous: str | None, batch: int = 5000, grace_s: int = 3600
                  ) -> tuple[int, int]:
    """After switching to `version`: `previous` expires after `grace_s` (requests that read
    the old version just before the switch still find its lists), every other version is
    deleted. `previous` None (unknown, e.g. a retry after the switch) gives every other
    version the grace period. Returns (keys expiring, keys deleted).

    Under the model's lock (`held_lock`): without it, the half-written keys of a version
    another publisher is writing would count as an old version's."""
    expiring = deleted = 0
    for old, old_keys in _versions(client, KINDS[model]).items():
        if old == version:
            continue
        for lo in range(0, len(old_keys), batch):
            chunk = old_keys[lo:lo + batch]
            if previous is None or old == previous:
                # NX: a key already expiring keeps its time, so runs that find their version
                # serving (every rejected run re-serving the champion) do not keep it alive.
                _fenced(client, lock, [("EXPIRE", key, grace_s, "NX") for key in chunk])
                expiring += len(chunk)
            else:
                deleted += sum(_fenced(client, lock, [("UNLINK", key) for key in chunk]))
            renew(lock)
    return expiring, deleted


def record_published(conn: Connection[Any], model: str, version: str) -> None:
    """PostgreSQL `models`: this version is published; the one before it, and any champion
    that never got published, are retired (all or nothing)."""
    with conn.transaction():
        conn.execute("UPDATE models SET status = 'retired' WHERE name = %s"
                     " AND status IN ('published', 'champion') AND version <> %s",
                     (model, version))
        # Recorded again (a run that found its champion serving): published_at stays the
        # time it started serving.
        conn.execute("UPDATE models SET published_at = CASE WHEN status = 'published'"
                     " THEN published_at ELSE now() END, status = 'published'"
                     " WHERE name = %s AND version = %s", (model, version))
