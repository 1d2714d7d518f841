"""Realistic feature data for the recommendation benchmark, filled fast into Redis.

Pools of distinct payloads (DUMP/RESTORE, prebuilt neighbour lists) are copied across keys, so
every user and item has full-size features while the fill stays well under a minute.
"""

from __future__ import annotations

import collections
import time
import uuid

import numpy as np
import orjson
import redis

from reco import keys, neighbours

SCRATCH_USER = "bench-scratch"  # its recent list and times are built, DUMPed, then deleted


class Sizes:
    def __init__(self, quick: bool) -> None:
        scale = 10 if quick else 1
        self.items = 100_000 // scale
        self.users = 100_000 // scale
        self.recent = 50
        self.coview = 200
        self.knn = 100
        self.cf = 100  # ALS item-item neighbours and user candidates, as spark_jobs/als.py
        self.seq = 100  # SASRec user candidates, as spark_jobs/sasrec.py
        # A user's seen set (exclude_seen): at least the recent items, here 50 touched before.
        self.seen_before_recent = 50
        self.pool = 1000  # distinct payloads, copied to every key (cheap realistic fill)
        self.categories = 500


def fill(r: redis.Redis, s: Sizes, rng: np.random.Generator) -> dict[str, float]:
    """Catalogue, popularity, co-view sets, KNN and ALS lists, users' recent and seen items."""
    timings: dict[str, float] = {}
    now = time.time()
    ids = [f"i{n}" for n in range(s.items)]
    # Zipf-like popularity: a few items get most attention, neighbours are drawn the same way.
    weight = 1.0 / np.arange(1, s.items + 1) ** 0.9
    weight /= weight.sum()
    order = rng.permutation(s.items)

    def draw(n: int) -> list[str]:
        picks = order[rng.choice(s.items, size=n * 2, p=weight)]
        return [ids[j] for j in dict.fromkeys(picks.tolist())][:n]

    start = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    price = rng.uniform(1, 500, s.items).round(2)
    stock = rng.random(s.items) > 0.05
    created = np.where(rng.random(s.items) < 0.05, now - rng.uniform(0, 14 * 86400, s.items),
                       now - rng.uniform(30 * 86400, 900 * 86400, s.items))
    for n, item in enumerate(ids):
        pipe.hset(keys.item_meta(item), mapping={
            "category": f"cat{int(order[n]) % s.categories}", "price": float(price[n]),
            "in_stock": "1" if stock[n] else "0", "created_at": float(created[n]),
            "title": f"Item {n}"})
        pipe.sadd(keys.ITEM_IDS, item)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.set(keys.ITEM_META_VERSION, 1)
    pipe.execute()
    timings["catalogue"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = 1000.0 * weight[np.argsort(order)]
    for lo in range(0, s.items, 10_000):
        r.zadd(keys.ITEM_POPULARITY, {ids[n]: float(scores[n]) for n in range(lo, min(
            s.items, lo + 10_000))})
    # Every model the served configuration blends, so a miss reads what it reads in production.
    r.hset(keys.MODEL_VERSIONS, mapping={"item2vec": "v1", "als": "a1", "sasrec": "s1"})
    r.hset(keys.MODEL_PUBLISHED_AT, mapping={"item2vec": now - 3600, "als": now - 86400,
                                            "sasrec": now - 86400})
    timings["popularity"] = time.perf_counter() - start

    start = time.perf_counter()
    coview_pool = []
    for j in range(s.pool):
        tmp = keys.co_view(f"bench-scratch-{j}")  # built once, DUMPed, RESTOREd per item
        members = draw(s.coview)
        r.zadd(tmp, {m: float(len(members) - k) for k, m in enumerate(members)})
        coview_pool.append(r.dump(tmp))
        r.delete(tmp)
    knn_pool = [neighbours.encode(draw(s.knn), np.linspace(0.95, 0.3, s.knn))
                for _ in range(s.pool)]
    item_cf_pool = [neighbours.encode(draw(s.cf), np.linspace(0.9, 0.2, s.cf))
                    for _ in range(s.pool)]
    for lo in range(0, s.items, 2000):
        pipe = r.pipeline(transaction=False)
        for n in range(lo, min(s.items, lo + 2000)):
            pipe.restore(keys.co_view(ids[n]), 0, coview_pool[n % s.pool], replace=True)
            pipe.set(keys.item_knn(ids[n], "v1"), knn_pool[(n * 7) % s.pool])
            pipe.set(keys.item_cf_neighbours(ids[n], "a1"), item_cf_pool[(n * 11) % s.pool])
        pipe.execute()
    timings["item_lists"] = time.perf_counter() - start

    start = time.perf_counter()
    recent_pool, times_pool, seen_pool = [], [], []
    for _ in range(s.pool):
        touched = draw(s.recent + s.seen_before_recent)
        items = touched[: s.recent]
        # The recent items within a day, the others touched before them (within 30 days).
        ages = np.concatenate([np.sort(rng.uniform(0, 24 * 3600, len(items))),
                               np.sort(rng.uniform(24 * 3600, 30 * 24 * 3600,
                                                   len(touched) - len(items)))])
        recent, times = keys.user_recent(SCRATCH_USER), keys.user_recent_times(SCRATCH_USER)
        seen = keys.user_seen(SCRATCH_USER)
        r.rpush(recent, *items)
        r.hset(times, mapping={m: now - float(a)
                               for m, a in zip(items, ages[: len(items)], strict=True)})
        r.zadd(seen, {m: int((now - a) * 1000) for m, a in zip(touched, ages.tolist(),
                                                                strict=True)})
        recent_pool.append(r.dump(recent))
        times_pool.append(r.dump(times))
        seen_pool.append(r.dump(seen))
        r.delete(recent, times, seen)
    # Users' lists as the publisher writes them: ids, scores and the ids' numbers in the
    # model's item list (here every item, in catalogue order: "i{n}" is number n).
    for model, version in (("als", "a1"), ("sasrec", "s1")):
        r.set(keys.model_items(model, version), orjson.dumps(ids))

    def user_list(n: int, scores: np.ndarray) -> bytes:
        picks = draw(n)
        return neighbours.encode(picks, scores, [int(i[1:]) for i in picks])

    cf_pool = [user_list(s.cf, np.linspace(2.0, 0.5, s.cf)) for _ in range(s.pool)]
    seq_pool = [user_list(s.seq, np.geomspace(0.05, 0.0005, s.seq)) for _ in range(s.pool)]
    for lo in range(0, s.users, 2000):
        pipe = r.pipeline(transaction=False)
        for n in range(lo, min(s.users, lo + 2000)):
            user = f"u{n}"
            pipe.restore(keys.user_recent(user), 0, recent_pool[n % s.pool], replace=True)
            pipe.restore(keys.user_recent_times(user), 0, times_pool[n % s.pool], replace=True)
            pipe.restore(keys.user_seen(user), 0, seen_pool[n % s.pool], replace=True)
            pipe.set(keys.user_cf(user, "a1"), cf_pool[(n * 3) % s.pool])
            pipe.set(keys.user_seq(user, "s1"), seq_pool[(n * 13) % s.pool])
        pipe.execute()
    timings["users"] = time.perf_counter() - start
    return timings


class MixActions:
    """Realistic mix: Zipf-active users; each action is an event (applied to Redis as the
    feature processor does) with probability `event_share`, else a recommendation request.

    Also counts what a response cache could at best do on this sequence: a request is
    `hittable` when the same user's previous action was a request that was answered before
    this one was sent (an event in between, or no earlier request, makes it a miss under the
    rule that a cached list never ignores the user's latest event). A request sent while the
    previous one is unanswered may find its entry or not (a race: the API queues the entry
    before it answers, and the queue goes out ahead of its next read on its one Redis
    connection), so it is not counted, and hits can exceed the count by such races. The load
    generator reports answers through `answered(path)`.
    """

    def __init__(self, r: redis.Redis, s: Sizes, rng: np.random.Generator, first_user: int,
                 active: int, event_share: float) -> None:
        self._actions = self._generate(r, s, rng, first_user, active, event_share)
        self._cached: set[int] = set()  # users whose last action was a request
        self._in_flight: collections.Counter[str] = collections.Counter()  # by request path
        self.requests = self.hittable = 0

    def reset(self) -> None:
        """Zero the counters (the users' state carries on)."""
        self.requests = self.hittable = 0

    def __iter__(self) -> MixActions:
        return self

    def __next__(self):
        return next(self._actions)

    def answered(self, path: str) -> None:
        self._in_flight[path] -= 1

    def _generate(self, r: redis.Redis, s: Sizes, rng: np.random.Generator, first_user: int,
                  active: int, event_share: float):
        weight = 1.0 / np.arange(1, active + 1)
        weight /= weight.sum()
        while True:
            users = first_user + rng.choice(active, size=1000, p=weight)
            kinds = rng.random(1000) < event_share
            items = rng.integers(0, s.items, 1000)
            for user, is_event, item in zip(users.tolist(), kinds.tolist(), items.tolist(),
                                            strict=True):
                if is_event:
                    self._cached.discard(user)
                    yield _event(r, f"u{user}", f"i{item}")
                else:
                    path = f"/recommendations?user_id=u{user}&k=20"
                    self.requests += 1
                    self.hittable += user in self._cached and self._in_flight[path] == 0
                    self._cached.add(user)
                    self._in_flight[path] += 1
                    yield path


def _event(r: redis.Redis, user: str, item: str):
    def apply() -> None:
        pipe = r.pipeline(transaction=False)
        pipe.lrem(keys.user_recent(user), 0, item)
        pipe.lpush(keys.user_recent(user), item)
        pipe.ltrim(keys.user_recent(user), 0, 49)
        pipe.hset(keys.user_recent_times(user), item, time.time())
        pipe.zadd(keys.user_seen(user), {item: int(time.time() * 1000)})
        pipe.set(keys.user_last_event(user), str(uuid.uuid4()))
        pipe.execute()

    return apply
