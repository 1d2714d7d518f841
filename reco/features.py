"""Real-time feature algorithms as pure functions, shared by the processor and offline evaluation.

The processor (streaming/processor.py) only does I/O around `plan_batch`: it reads each user's
recent items, calls `plan_batch`, and writes the resulting increments to Redis. Offline code can
replay events through the same functions and get the same features.

Popularity uses forward decay (Cormode et al.): an event of weight w at time t adds
w * 2**((t - L) / half_life) to its item, with a fixed landmark L. Every score is then the
decayed count times the same factor 2**((now - L) / half_life), so ratios between items are
exact without ever rescanning the set, and readers normalise per request (the factor cancels).
Doubles overflow past 2**1023, so event times must stay within ~1,000 half-lives after L
(24h half-life: ~2.8 years). The default landmark (Settings.popularity_landmark_s) is
1.79e9 (2026-09-20), good until ~2029-06. Before that, move the landmark forward by D seconds and
multiply the stored scores by 2**(-D / half_life) once (ZUNIONSTORE k 1 k WEIGHTS f per key),
with the processors stopped: one still on the old landmark would add at the old scale, and its
prune (streaming/popularity_prune.py) would take the rescaled members for faded ones.
Events past the limit are not scored (`FeatureUpdates.unscored`) rather than corrupting the set.
Co-view affinity is forward-decayed the same way (its own half-life, the same landmark), so a
set trimmed to its best members lets new partners in as old pairs age.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class EventLike(Protocol):
    """What the algorithms need from an event (reco.events.Event satisfies it)."""

    user_id: str
    item_id: str
    event_type: str

    @property
    def timestamp_s(self) -> float: ...


@dataclass(frozen=True)
class FeatureParams:
    """The knobs of the real-time features, taken from Settings once."""

    event_weights: Mapping[str, float]
    recent_max: int = 50
    seen_max: int = 500  # exclude_seen's reach, newest first (offline evaluation mirrors it)
    half_life_s: float = 24 * 3600.0
    landmark_s: float = 1_790_000_000.0
    coview_recent_n: int = 10
    coview_window_s: float = 30 * 60.0
    coview_half_life_s: float = 30 * 86400.0
    trending_window_s: int = 3600
    trending_bucket_s: int = 60

    @classmethod
    def from_settings(cls, settings: Any) -> FeatureParams:
        return cls(
            event_weights=dict(settings.event_weights),
            recent_max=settings.recent_max,
            seen_max=settings.seen_max,
            half_life_s=settings.popularity_half_life_h * 3600.0,
            landmark_s=settings.popularity_landmark_s,
            coview_recent_n=settings.coview_recent_n,
            coview_window_s=float(settings.coview_window_s),
            coview_half_life_s=settings.coview_half_life_h * 3600.0,
            trending_window_s=settings.trending_window_s,
            trending_bucket_s=settings.trending_bucket_s,
        )


MAX_HALF_LIVES = 1000.0  # 2**1000 * weight * events stays below the double limit (2**1024)


def forward_decayed(
    weight: float, t_s: float, landmark_s: float, half_life_s: float
) -> float | None:
    """Forward-decayed contribution of one event (to popularity or a co-view pair); None if the
    landmark is too old for `t_s`."""
    exponent = (t_s - landmark_s) / half_life_s
    if exponent > MAX_HALF_LIVES:
        return None
    return weight * math.pow(2.0, exponent)


def trending_bucket_start(t_s: float, bucket_s: int) -> int:
    return int(t_s // bucket_s) * bucket_s


def trending_bucket_starts(now_s: float, window_s: int, bucket_s: int) -> list[int]:
    """Bucket starts whose union covers the last `window_s` seconds, newest first (for readers)."""
    newest = trending_bucket_start(now_s, bucket_s)
    count = math.ceil(window_s / bucket_s)
    return [newest - i * bucket_s for i in range(count)]


def coview_partners(
    recent: Sequence[str], times: Mapping[str, float], item_id: str, t_s: float,
    recent_n: int, window_s: float,
) -> list[str]:
    """Items whose co-view affinity with `item_id` grows when the user touches it at `t_s`.

    The user's `recent_n` most recent other items (newest first) that were touched within
    `window_s` of this event; the same item is never its own partner.
    """
    partners = []
    for other in recent:
        if other == item_id:
            continue
        if len(partners) == recent_n:
            break
        touched = times.get(other)
        if touched is not None and abs(t_s - touched) <= window_s:
            partners.append(other)
    return partners


@dataclass
class RecentItems:
    """One user's distinct recent items, newest first, with when each was last touched."""

    items: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)

    @classmethod
    def loaded(cls, items: Iterable[str], times: Mapping[str, float]) -> RecentItems:
        """The state as read from the list and the hash, which can drift apart (one key evicted
        or edited by hand): duplicates in the list and times of unlisted items are dropped."""
        distinct = list(dict.fromkeys(items))  # the newest copy of each item stays
        return cls(distinct, {item: times[item] for item in distinct if item in times})

    def touch(self, item_id: str, t_s: float, max_len: int) -> None:
        """`item_id` touched at `t_s`, placed by time: a late event (a backfill beside live
        traffic, a client's retry) goes to its place rather than to the head, and one older
        than the item's own last touch changes nothing."""
        items, times = self.items, self.times
        # Membership from the list itself, not the hash: a mismatch must not raise (a wedged
        # batch) nor leave the item twice in the list. An item without a time counts as oldest.
        if item_id in items:
            if times.get(item_id, -math.inf) > t_s:
                return
            items.remove(item_id)
        at = 0
        while at < len(items) and times.get(items[at], -math.inf) > t_s:
            at += 1  # live events stop at once: the head is older
        items.insert(at, item_id)
        times[item_id] = t_s
        for dropped in items[max_len:]:
            times.pop(dropped, None)  # keep the hash as small as the list
        del items[max_len:]


@dataclass
class FeatureUpdates:
    """Aggregated increments of one batch: one write per key, however many events touched it."""

    recent: dict[str, RecentItems] = field(default_factory=dict)  # final state per touched user
    popularity: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    category_popularity: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    trending: dict[int, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    coview: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    unscored: int = 0  # events beyond the popularity landmark's range (see module docstring)


def plan_batch(
    events: Iterable[EventLike],
    recent: Mapping[str, RecentItems],
    categories: Mapping[str, str | None],
    params: FeatureParams,
    now_s: float,
) -> FeatureUpdates:
    """Apply events in order to the users' recent items and sum every feature increment.

    `recent` holds each user's state before the batch (it is not modified); `categories` maps
    item ids to their catalogue category where known. Trending counts skip events older than
    the trending window: their buckets have already expired.
    """
    out = FeatureUpdates()
    oldest_bucket = trending_bucket_start(
        now_s - params.trending_window_s, params.trending_bucket_s)
    for event in events:
        state = out.recent.get(event.user_id)
        if state is None:
            before = recent.get(event.user_id) or RecentItems()
            state = out.recent[event.user_id] = RecentItems(list(before.items), dict(before.times))
        t_s, item = event.timestamp_s, event.item_id
        weight = params.event_weights[event.event_type]

        partners = coview_partners(state.items, state.times, item, t_s,
                                   params.coview_recent_n, params.coview_window_s)
        affinity = (forward_decayed(1.0, t_s, params.landmark_s, params.coview_half_life_s)
                    if partners else None)
        for other in partners if affinity is not None else ():
            out.coview[other][item] += affinity
            out.coview[item][other] += affinity
        state.touch(item, t_s, params.recent_max)

        score = forward_decayed(weight, t_s, params.landmark_s, params.half_life_s)
        if score is None:
            out.unscored += 1
        else:
            out.popularity[item] += score
            category = categories.get(item)
            if category:
                out.category_popularity[category][item] += score
        bucket = trending_bucket_start(t_s, params.trending_bucket_s)
        if bucket >= oldest_bucket:
            out.trending[bucket][item] += weight
    return out
