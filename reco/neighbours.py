"""Codec of the published neighbour lists: one Redis string per item (or user) and version.

The batch publisher writes `encode(ids, scores)` under `keys.item_knn` and
`keys.item_cf_neighbours`, and `encode(ids, scores, codes)` under `keys.user_cf` and
`keys.user_seq`; the recommendation API reads them back with `decode` and `decode_coded`. One
compact value per key keeps a request's reads to one GET per source item and the parsing in C
(orjson).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

EMPTY: tuple[list[str], np.ndarray] = ([], np.zeros(0, dtype=np.float64))


def encode(ids: Sequence[str], scores: Sequence[float] | np.ndarray,
           codes: Sequence[int] | np.ndarray | None = None) -> bytes:
    """`{"ids": [...], "scores": [...]}`, best first; ids and scores must have the same length.

    `codes`, when given, are the ids' positions in the model version's item list
    (`keys.model_items`), written as `"codes"`: a reader that has mapped that list to its own
    rows once takes the rows from there instead of looking up every id (a user's lists are
    read on every cache miss, each time by a new user)."""
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
    score_list = scores.tolist() if isinstance(scores, np.ndarray) else [float(s) for s in scores]
    value: dict = {"ids": list(ids), "scores": score_list}
    if codes is not None:
        if len(codes) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(codes)} codes")
        value["codes"] = codes.tolist() if isinstance(codes, np.ndarray) else list(codes)
    return orjson.dumps(value)


def decode_coded(raw: bytes | str | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """`(ids, scores, codes)` of one published list; codes None when it has none (lists
    published before codes existed, item lists)."""
    if not raw:
        return [], np.zeros(0, dtype=np.float64), None
    data = orjson.loads(raw)
    codes = data.get("codes")
    return (data["ids"], np.asarray(data["scores"], dtype=np.float64),
            None if codes is None else np.asarray(codes, dtype=np.int64))


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
