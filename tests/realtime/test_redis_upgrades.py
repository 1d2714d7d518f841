"""`reco db carry-seen-sets`: the unbounded seen sets of older releases, moved into the bounded
sorted sets, against a real Redis."""

from __future__ import annotations

import pytest
import redis
from typer.testing import CliRunner

from reco import keys
from reco.redis_upgrades import carry_seen_sets
from reco.settings import Settings

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


def test_old_sets_move_with_the_times_known_the_newest_kept(redis_client: redis.Redis) -> None:
    r = redis_client
    # u1: five items, two with a recent time; u2 already acted since the upgrade.
    r.sadd(keys.user_seen_unbounded("u1"), "a", "b", "c", "d", "e")
    r.pexpire(keys.user_seen_unbounded("u1"), 10 * DAY_MS)
    r.hset(keys.user_recent_times("u1"), mapping={"a": 1_700_000_000.5, "b": 1_700_000_100.0})
    r.sadd(keys.user_seen_unbounded("u2"), "x", "y")
    r.pexpire(keys.user_seen_unbounded("u2"), 20 * DAY_MS)
    r.zadd(keys.user_seen("u2"), {"y": 1_800_000_000_000})
    r.pexpire(keys.user_seen("u2"), 30 * DAY_MS)
    r.sadd(keys.user_seen_unbounded("u3"), "z")  # no expiry: it gets the setting's
    r.set(keys.user_seen_unbounded("not-a-set"), "left alone")

    assert carry_seen_sets(r, seen_max=3, seen_ttl_s=7 * 86400) == 3

    u1 = r.zrange(keys.user_seen("u1"), 0, -1, desc=True, withscores=True)
    assert u1[:2] == [("b", 1_700_000_100_000.0), ("a", 1_700_000_000_500.0)]
    assert len(u1) == 3 and u1[2][0] in {"c", "d", "e"} and u1[2][1] == 0.0  # trimmed to 3
    assert 9 * DAY_MS < r.pttl(keys.user_seen("u1")) <= 10 * DAY_MS
    # What the processor wrote since the upgrade stays, and so does its later expiry.
    assert r.zrange(keys.user_seen("u2"), 0, -1, withscores=True) == [
        ("x", 0.0), ("y", 1_800_000_000_000.0)]
    assert r.pttl(keys.user_seen("u2")) > 29 * DAY_MS
    assert 6 * DAY_MS < r.pttl(keys.user_seen("u3")) <= 7 * DAY_MS
    assert not r.exists(*[keys.user_seen_unbounded(u) for u in ("u1", "u2", "u3")])
    assert r.get(keys.user_seen_unbounded("not-a-set")) == "left alone"
    assert carry_seen_sets(r, seen_max=3, seen_ttl_s=7 * 86400) == 0  # again: nothing left


def test_the_command_uses_the_settings(redis_client: redis.Redis, settings: Settings,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from reco.cli import app
    from reco.settings import get_settings

    redis_client.sadd(keys.user_seen_unbounded("u9"), *[f"i{n}" for n in range(10)])
    monkeypatch.setenv("RECO_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("RECO_SEEN_MAX", "4")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "carry-seen-sets"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "moved 1 seen sets" in result.output
    assert redis_client.zcard(keys.user_seen("u9")) == 4
