"""One-off moves of Redis data between releases' key layouts (`reco db carry-seen-sets`)."""

from __future__ import annotations

import redis

from reco import keys


def carry_seen_sets(client: redis.Redis, seen_max: int, seen_ttl_s: int,
                    scan_count: int = 1000) -> int:
    """Move each unbounded `user:seen:{user}` set into `keys.user_seen`, then delete it.

    Items keep the time the recent-items hash knows for them, the others count as older than
    any (score 0), so the newest `seen_max` stay. Members and times the processor wrote since
    the upgrade win (ZADD NX), and the later of the two expiries stays (`seen_ttl_s` for a set
    without one). Safe to run again and beside a running processor. Returns how many sets were
    moved.
    """
    moved = 0
    prefix = keys.USER_SEEN_UNBOUNDED_PATTERN.removesuffix("*")
    for old in client.scan_iter(match=keys.USER_SEEN_UNBOUNDED_PATTERN, count=scan_count,
                                _type="set"):
        user = (old.decode() if isinstance(old, bytes) else old).removeprefix(prefix)
        items = client.smembers(old)
        ttl_ms = client.pttl(old)
        ttl_ms = ttl_ms if ttl_ms > 0 else seen_ttl_s * 1000
        times = client.hgetall(keys.user_recent_times(user))
        scores = {item: int(float(times.get(item, 0)) * 1000) for item in items}
        new = keys.user_seen(user)
        with client.pipeline(transaction=True) as pipe:
            if scores:
                pipe.zadd(new, scores, nx=True)
                pipe.zremrangebyrank(new, 0, -(seen_max + 1))
            pipe.pexpire(new, ttl_ms, nx=True)  # none yet: the old set's
            pipe.pexpire(new, ttl_ms, gt=True)  # or the later of the two
            pipe.delete(old)
            pipe.execute()
        moved += 1
    return moved
