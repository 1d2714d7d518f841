"""Evaluation through the HTTP API: ask /recommendations for many users, time each request.

The demo's protocol: replay each user's history, then call this for every evaluated user and
score the served lists with `reco.evaluation_split.score_rankings` against the held-out items.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class ServedLists:
    ranked: dict[str, list[str]] = field(default_factory=dict)  # user -> item ids, best first
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "HTTP 503" / exception name -> count

    def percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {}
        values = np.percentile(np.array(self.latencies_ms), [50, 95, 99])
        return {f"p{q}": round(float(v), 2) for q, v in zip((50, 95, 99), values, strict=True)}


async def fetch_recommendations_async(
    url: str, users: Iterable[str], k: int = 10, concurrency: int = 8,
    params: Mapping[str, Any] | None = None, transport: httpx.AsyncBaseTransport | None = None,
) -> ServedLists:
    """GET /recommendations?user_id=..&k=.. for each user, `concurrency` requests in flight."""
    out = ServedLists()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, user: str) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                resp = await client.get("/recommendations",
                                        params={"user_id": user, "k": k, **(params or {})})
            except httpx.TransportError as exc:
                out.errors[type(exc).__name__] += 1
                return
            out.latencies_ms.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200:
                out.errors[f"HTTP {resp.status_code}"] += 1
                return
            out.ranked[user] = [entry["item_id"] for entry in resp.json().get("items", [])]

    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits,
                                 transport=transport) as client:
        await asyncio.gather(*(one(client, u) for u in users))
    return out


def fetch_recommendations(
    url: str, users: Iterable[str], k: int = 10, concurrency: int = 8,
    params: Mapping[str, Any] | None = None,
) -> ServedLists:
    return asyncio.run(fetch_recommendations_async(url, users, k, concurrency, params))
