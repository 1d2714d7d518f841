"""A synthetic e-commerce event stream at any scale, streamed to Parquet chunk by chunk.

The model (each knob is a field of `SyntheticConfig`):
- catalogue: items spread over categories of uneven size; lognormal prices per category; a few %
  out of stock (viewed, never carted); most items predate the window, some arrive during it;
- popularity: Zipf-like within each category (weight 1/rank^a), so a few items dominate;
- users: lognormal activity, each in a taste group that prefers 3 categories (60/30/10%);
- sessions: a user's session walks through items: each next view stays in the category with
  `p_stay`, otherwise jumps to one of the group's categories (or any, with 1-`p_taste`);
- funnel per view: click with `p_click`, cart a click with `p_cart` (in stock only), purchase a
  cart with `p_purchase`; timestamps strictly increase within a session;
- time: session starts follow the produced-event count through a daily cycle (evening peak), so
  the window is covered evenly whatever the event total; the window ends at a fixed instant so
  a seed always gives the same bytes (replay shifts it to now).

Memory stays bounded: sessions are generated `chunk_events` at a time; events that could still
be overtaken by a later chunk's sessions are carried over, so the file comes out sorted by time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reco.data.catalogue import Catalogue, Users, make_catalogue, make_users
from reco.data.schema import EVENTS_FILE, EVENTS_SCHEMA, PARQUET_OPTIONS
from reco.events import EVENT_TYPES

DAY_MS = 86_400_000
DEFAULT_END_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 1_000
    items: int = 500
    events: int = 100_000
    seed: int = 0
    categories: int = 20
    groups: int = 8
    days: float = 30.0
    end_ms: int = DEFAULT_END_MS
    chunk_events: int = 500_000
    mean_views: float = 5.0
    max_views: int = 50
    p_click: float = 0.30
    p_cart: float = 0.10
    p_purchase: float = 0.30
    p_stay: float = 0.8
    p_taste: float = 0.9
    zipf_a: float = 1.0
    out_of_stock: float = 0.03
    new_arrivals: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.days) and self.days > 0):
            raise ValueError(f"days must be a finite number above 0, not {self.days}")

    @property
    def start_ms(self) -> int:
        return self.end_ms - int(self.days * DAY_MS)

    def rng(self, *stream: int) -> np.random.Generator:
        """An independent, reproducible random stream per purpose (and per chunk)."""
        return np.random.default_rng([self.seed, *stream])


@dataclass
class _Pending:
    """Events generated but not yet written, in columns of indices (strings come at write time)."""

    ts: np.ndarray
    session: np.ndarray
    slot: np.ndarray  # view index * 4 + funnel stage: the order inside a session
    user: np.ndarray
    item: np.ndarray
    stage: np.ndarray

    @classmethod
    def empty(cls) -> _Pending:
        z = np.empty(0, np.int64)
        return cls(z, z, z, z, z, np.empty(0, np.int8))

    def concat(self, other: _Pending) -> _Pending:
        return _Pending(*(np.concatenate([a, b]) for a, b in zip(self.cols(), other.cols(),
                                                                  strict=True)))

    def cols(self) -> tuple[np.ndarray, ...]:
        return (self.ts, self.session, self.slot, self.user, self.item, self.stage)

    def take(self, idx: np.ndarray | slice) -> _Pending:
        return _Pending(*(c[idx] for c in self.cols()))

    def __len__(self) -> int:
        return len(self.ts)


def _time_warp(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """CDF over the window (minute grid) of a daily cycle peaking at 20:00 UTC."""
    grid = np.arange(cfg.start_ms, cfg.end_ms + 1, 60_000, dtype=np.int64)
    hour = (grid % DAY_MS) / 3_600_000
    density = 1.0 + 0.6 * np.cos(2 * np.pi * (hour - 20.0) / 24.0)
    cdf = np.concatenate([[0.0], np.cumsum(density[:-1])])
    return cdf / cdf[-1], grid


def uuid4_strings(rng: np.random.Generator, n: int) -> pa.StringArray:
    """n random version-4 UUIDs as text, formatted without a Python loop."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((n, 32), np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), np.uint8)
    hex_positions = [p for p in range(36) if p not in (8, 13, 18, 23)]
    text[:, hex_positions] = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles]
    offsets = pa.py_buffer(np.arange(0, 36 * (n + 1), 36, dtype=np.int32).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text.tobytes()))


class _Generator:
    def __init__(self, cfg: SyntheticConfig, catalogue: Catalogue, users: Users) -> None:
        self.cfg, self.cat, self.users = cfg, catalogue, users
        self.cdf, self.grid = _time_warp(cfg)
        funnel = 1 + cfg.p_click * (1 + cfg.p_cart * (1 + cfg.p_purchase))
        self.events_per_session = cfg.mean_views * funnel

    def chunk(self, k: int, produced: int, first_session: int) -> tuple[_Pending, int]:
        """Sessions of chunk k; returns their events (session order) and the last start time."""
        cfg, cat, users = self.cfg, self.cat, self.users
        rng = cfg.rng(3, k)
        remaining = cfg.events - produced
        n_sess = max(1, math.ceil(min(cfg.chunk_events, remaining) / self.events_per_session))
        s_user = np.searchsorted(users.activity_cdf, rng.random(n_sess), side="right")
        s_views = np.minimum(rng.geometric(1.0 / cfg.mean_views, n_sess), cfg.max_views)
        n_views = int(s_views.sum())
        v_sess = np.repeat(np.arange(n_sess), s_views)
        v_first = np.repeat(np.cumsum(s_views) - s_views, s_views)
        v_pos = np.arange(n_views) - v_first
        v_user = s_user[v_sess]

        # Category walk: at session starts and with 1-p_stay, draw a new category; else keep it.
        switch = (v_pos == 0) | (rng.random(n_views) >= cfg.p_stay)
        taste = rng.random(n_views) < cfg.p_taste
        pref = np.searchsorted(users.preference_cdf, rng.random(n_views), side="right")
        group_cat = users.group_categories[users.group[v_user], pref]
        fresh = np.where(taste, group_cat, rng.integers(0, cat.n_categories, n_views))
        last_switch = np.maximum.accumulate(np.where(switch, np.arange(n_views), 0))
        v_cat = fresh[last_switch]
        v_item = cat.sample(v_cat, rng.random(n_views))

        clicked = rng.random(n_views) < cfg.p_click
        # Out-of-stock items are viewed and clicked, never carted.
        carted = clicked & (rng.random(n_views) < cfg.p_cart) & cat.in_stock[v_item]
        bought = carted & (rng.random(n_views) < cfg.p_purchase)
        dt_click = 1_000 + rng.exponential(5_000, n_views).astype(np.int64)
        dt_cart = 2_000 + rng.exponential(20_000, n_views).astype(np.int64)
        dt_buy = 10_000 + rng.exponential(60_000, n_views).astype(np.int64)
        dwell = 2_000 + rng.exponential(30_000, n_views).astype(np.int64)
        block = dwell + clicked * dt_click + carted * dt_cart + bought * dt_buy
        before = np.cumsum(block) - block
        v_offset = before - before[v_first]

        # Session starts follow the produced-event count through the daily-cycle warp.
        per_view = 1 + clicked.astype(np.int64) + carted + bought
        s_events = np.bincount(v_sess, weights=per_view, minlength=n_sess).astype(np.int64)
        s_before = produced + np.cumsum(s_events) - s_events
        s_start = np.interp(s_before / cfg.events, self.cdf, self.grid).astype(np.int64)
        v_ts = s_start[v_sess] + v_offset
        # Nobody sees an item before it arrives: those views go to the category's best seller
        # (always in stock, so event counts, and with them session starts, stay as computed).
        early = cat.created_at[v_item] > v_ts
        v_item = np.where(early, cat.top[v_cat], v_item)

        stages = [
            (np.ones(n_views, bool), v_ts),
            (clicked, v_ts + dt_click),
            (carted, v_ts + dt_click + dt_cart),
            (bought, v_ts + dt_click + dt_cart + dt_buy),
        ]
        parts = []
        for stage, (mask, ts) in enumerate(stages):
            idx = np.flatnonzero(mask)
            parts.append(_Pending(ts[idx], first_session + v_sess[idx], idx * 4 + stage,
                                  v_user[idx], v_item[idx], np.full(len(idx), stage, np.int8)))
        out = parts[0]
        for p in parts[1:]:
            out = out.concat(p)
        out = out.take(np.argsort(out.slot, kind="stable"))  # session order, funnel order
        if len(out) > remaining:
            out = out.take(slice(0, remaining))
        return out, int(s_start[-1])


def _to_arrow(p: _Pending, cat: Catalogue, users: Users, ids: pa.StringArray) -> pa.RecordBatch:
    session = pc.binary_join_element_wise("s", pc.cast(pa.array(p.session), pa.string()), "")
    return pa.record_batch(
        [ids, users.ids.take(pa.array(p.user)), cat.ids.take(pa.array(p.item)),
         pa.array(EVENT_TYPES).take(pa.array(p.stage)), pa.array(p.ts, pa.int64()), session],
        schema=EVENTS_SCHEMA,
    )


def write_events(
    cfg: SyntheticConfig, catalogue: Catalogue, users: Users, path: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Generate cfg.events events into `path`, sorted by time; returns counts per event type."""
    gen = _Generator(cfg, catalogue, users)
    id_rng = cfg.rng(4)
    counts = np.zeros(len(EVENT_TYPES), np.int64)
    pending, produced, session0, k = _Pending.empty(), 0, 0, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, EVENTS_SCHEMA, **PARQUET_OPTIONS) as writer:
        while produced < cfg.events or len(pending):
            if produced < cfg.events:
                new, boundary = gen.chunk(k, produced, session0)
                produced += len(new)
                session0 = int(new.session.max()) + 1
                pending = pending.concat(new)
                k += 1
            final = produced >= cfg.events
            pending = pending.take(np.lexsort((pending.slot, pending.session, pending.ts)))
            # Later sessions start at or after `boundary`: anything earlier is final.
            n_out = len(pending) if final else int(np.searchsorted(pending.ts, boundary, "left"))
            out, pending = pending.take(slice(0, n_out)), pending.take(slice(n_out, None))
            if n_out:
                writer.write_batch(_to_arrow(out, catalogue, users, uuid4_strings(id_rng, n_out)),
                                   row_group_size=max(n_out, 1))
                counts += np.bincount(out.stage, minlength=len(EVENT_TYPES))
                if progress:
                    progress(n_out)
    return dict(zip(EVENT_TYPES, (int(c) for c in counts), strict=True))


def generate(
    cfg: SyntheticConfig, out_dir: Path, progress: Callable[[int], None] | None = None
) -> dict[str, object]:
    """`reco data synthetic`: items.parquet, users.parquet, events.parquet and manifest.json."""
    from reco.data.catalogue import write_catalogue, write_users

    catalogue = make_catalogue(cfg)
    users = make_users(cfg, catalogue)
    write_catalogue(catalogue, out_dir)
    write_users(users, catalogue, out_dir)
    counts = write_events(cfg, catalogue, users, out_dir / EVENTS_FILE, progress)
    manifest = {"generator": "synthetic", "config": asdict(cfg), "event_counts": counts}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
