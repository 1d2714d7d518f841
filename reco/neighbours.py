"""Codec of the published neighbour lists: one Redis string per item (or user) and version.

The batch publisher writes `encode(ids, scores)` under `keys.item_knn`, `keys.item_cf_neighbours`
and `keys.user_cf`; the recommendation API reads them back with `decode`. One compact value per
key keeps a request's reads to one GET per source item and the parsing in C (orjson).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

EMPTY: tuple[list[str], np.ndarray] = ([], np.zeros(0, dtype=np.float64))


def encode(ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> bytes:
    """`{"ids": [...], "scores": [...]}`, best first; ids and scores must have the same length."""
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
    score_list = scores.tolist() if isinstance(scores, np.ndarray) else [float(s) for s in scores]
    return orjson.dumps({"ids": list(ids), "scores": score_list})


def decode(raw: bytes | str | None, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """`(ids, scores)` of one published list, truncated to `limit`; missing key -> empty."""
    if not raw:
        return [], np.zeros(0, dtype=np.float64)
    data = orjson.loads(raw)
    ids: list[str] = data["ids"]
    scores: list[float] = data["scores"]
    if limit is not None:
        ids, scores = ids[:limit], scores[:limit]
    return ids, np.asarray(scores, dtype=np.float64)
