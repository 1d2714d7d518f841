"""The numeric core of `reco.ranking.rank`: candidates, rules, signals and scores in one
compiled pass (numba).

A cache miss ranks ~1,000-1,700 list entries. As numpy code this step was ~60 array calls of a
few microseconds each (dedup, eligibility, six signals, normalisation, the weighted sum, the
sort): about a third of a miss's CPU time in the API, mostly per-call overhead.
Compiled, it is one call.

Every operation mirrors the numpy code it replaces, in the same order, so the floating-point
results are bit for bit the same: sums add entries in list order (as `np.bincount`), maxima
follow `np.maximum`'s NaN rule, and the ranking is the stable sort by descending score (ties
in candidate order) that `np.argsort(kind="stable")` gave.

Explanations ("because you viewed X") run the same signal and weighting steps over (candidate,
source) pairs in `source_contributions`, only when asked: the pass itself does no extra work.

Compiled lazily on the first call and cached on disk (`cache=True`); `warm_up` compiles both
ahead of serving.
"""

from __future__ import annotations

import numpy as np
from numba import njit

DAY_S = 86_400.0
N_RAW = 7  # coview, embedding, popularity, recency, ALS item-item, ALS user, SASRec


@njit(cache=True, inline="always")
def _np_max(a: float, b: float) -> float:
    """`np.maximum(a, b)` exactly: a NaN wins, and a tie (0.0 and -0.0) gives `b`."""
    return a if (a > b or a != a) else b


@njit(cache=True)
def _radix_sort(values, keys):  # pragma: no cover - compiled
    """`values` stably ordered by ascending `keys` (uint64, one per value): an LSD radix
    sort, a byte per pass, skipping the bytes in which no key differs (candidate rows below
    2**24 need 3 passes of 8). ~4x faster than a merge sort on the ~1,000-1,700 candidates of
    a request, and plain loops compile in a fraction of the time numpy's sorts take in numba
    (seconds of CPU at every cold start)."""
    n = len(values)
    a, ka = values.copy(), keys.copy()
    b, kb = np.empty_like(a), np.empty_like(ka)
    varying = np.uint64(0)  # the bits in which some key differs from the first
    for i in range(n):
        varying |= ka[i] ^ ka[0]
    count = np.empty(257, dtype=np.int64)
    for shift in range(0, 64, 8):
        if (varying >> np.uint64(shift)) & np.uint64(255) == 0:
            continue
        count[:] = 0
        for i in range(n):
            count[((ka[i] >> np.uint64(shift)) & np.uint64(255)) + 1] += 1
        for d in range(256):
            count[d + 1] += count[d]
        for i in range(n):
            d = (ka[i] >> np.uint64(shift)) & np.uint64(255)
            at = count[d]
            b[at] = a[i]
            kb[at] = ka[i]
            count[d] = at + 1
        a, b = b, a
        ka, kb = kb, ka
    return a


@njit(cache=True)
def _ascending(values):  # pragma: no cover - compiled
    """Non-negative integers in ascending order."""
    keys = np.empty(len(values), dtype=np.uint64)
    for i in range(len(values)):
        keys[i] = np.uint64(values[i])
    return _radix_sort(values, keys)


@njit(cache=True)
def _by_descending_score(values, score):  # pragma: no cover - compiled
    """`values` by descending `score[value]`, ties in input order: for finite scores the order
    of `np.argsort(-score[values], kind="stable")`."""
    keys = np.empty(len(values), dtype=np.uint64)
    bits = np.empty(1, dtype=np.float64)
    view = bits.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    for i in range(len(values)):
        bits[0] = score[values[i]] + 0.0  # -0.0 becomes 0.0: they tie, as in a comparison
        u = view[0]
        # The IEEE bits as an unsigned key ascending with the score, then reversed.
        keys[i] = ~(~u if u & sign else u | sign)
    return _radix_sort(values, keys)


@njit(cache=True)
def _add_raw_signals(raw, at, n_entries, bounds, scores, src, recency_w,
                     agg_sum):  # pragma: no cover - compiled
    """Each entry's evidence into the raw signals of its cell `at[i]`, in entry order: the one
    definition of how list entries make the signals (cells are candidates for the score,
    (candidate, source) pairs for explanations). bounds: ends of the co-view, KNN, ALS
    item-item and ALS user entries; SASRec's run to `n_entries`."""
    cv, kn, ic, uc = bounds[0], bounds[1], bounds[2], bounds[3]
    for i in range(cv):
        raw[0, at[i]] += scores[i]
    for row, lo, hi in ((1, cv, kn), (4, kn, ic)):  # similarities: negative is no evidence
        for i in range(lo, hi):
            p = at[i]
            if agg_sum:
                raw[row, p] += _np_max(scores[i], 0.0)
            else:
                raw[row, p] = _np_max(raw[row, p], scores[i])
    for i in range(ic, uc):
        raw[5, at[i]] = _np_max(raw[5, at[i]], scores[i])
    for i in range(uc, n_entries):
        raw[6, at[i]] = _np_max(raw[6, at[i]], scores[i])
    for i in range(ic):
        raw[3, at[i]] = _np_max(raw[3, at[i]], recency_w[src[i]])


@njit(cache=True)
def _weigh(raw, j, tops, weights, part, weighted):  # pragma: no cover - compiled
    """Cell j's raw signals divided by their maxima `tops` and weighted, into
    `weighted[:, j]` (SIGNALS order); returns their sum. `part` is a work array."""
    for s in range(N_RAW):
        part[s] = raw[s, j] / tops[s] if tops[s] > 0 else 0.0
    part[4] = _np_max(part[5], part[4])  # cf: the larger of user and item-item
    part[5] = part[6]  # seq
    for s in range(6):
        weighted[s, j] = weights[s] * part[s]
    total = weighted[0, j] + weighted[1, j]
    for s in range(2, 6):
        total += weighted[s, j]
    return total


@njit(cache=True)
def score_candidates(codes, n_entries, bounds, scores, src, recency_w, slot, unknown_row,
                     popularity, in_stock, category, price, created_at, category_code,
                     has_min, min_price, has_max, max_price, exclude, weights, agg_sum,
                     fresh_boost, now, fresh_days):  # pragma: no cover - compiled
    """Score every candidate of one request.

    codes: every entry's candidate code (list entries first, `n_entries` of them, then the
    popular filler); bounds: ends of the co-view, KNN, ALS item-item and ALS user entries
    (SASRec's run to `n_entries`); src: each source entry's source; slot: a work array over
    every code (garbage in, valid at the candidates' codes out); category_code: the asked
    category's code, -1 (never a code asked for) when none was asked.

    Returns (rows, pos, weighted, fresh, tops, score, order): candidate codes sorted, each
    entry's candidate, each signal weighted (rows in SIGNALS order), the freshness boost (the
    share `fresh_boost` of a new item's weighted score, added to it), each
    raw signal's maximum over the eligible candidates, the total score, and the eligible
    candidates best first (a stable sort). Scores are finite (NaN inputs would order differently
    from numpy's sort).
    """
    n = len(codes)
    # Dedup through the row-indexed slot array: each code's last entry wins, then candidates
    # are the codes in ascending order.
    for i in range(n):
        slot[codes[i]] = i
    m = 0
    for i in range(n):
        if slot[codes[i]] == i:
            m += 1
    rows = np.empty(m, dtype=np.int64)
    j = 0
    for i in range(n):
        if slot[codes[i]] == i:
            rows[j] = codes[i]
            j += 1
    rows = _ascending(rows)
    for j in range(m):
        slot[rows[j]] = j
    pos = np.empty(n_entries, dtype=np.int64)
    for i in range(n_entries):
        pos[i] = slot[codes[i]]

    # Business rules: in stock, category, price range, not seen.
    keep = np.empty(m, dtype=np.bool_)
    fresh = np.empty(m)
    limit = fresh_days * DAY_S
    for j in range(m):
        r = min(rows[j], unknown_row)
        ok = in_stock[r]
        if category_code != -1:
            ok = ok and category[r] == category_code
        if has_min:  # NaN comparisons are False: unknown prices drop out
            ok = ok and price[r] >= min_price
        if has_max:
            ok = ok and price[r] <= max_price
        keep[j] = ok
        age = now - created_at[r]
        fresh[j] = fresh_boost * (1.0 if (age >= 0 and age <= limit) else 0.0)
    for e in exclude:
        if e >= 0:
            j = slot[e]  # garbage where e is not a candidate, which the check rejects
            if 0 <= j < m and rows[j] == e:
                keep[j] = False

    # Raw signals per candidate (popularity is no list's: it is the item's).
    raw = np.zeros((N_RAW, m))
    _add_raw_signals(raw, pos, n_entries, bounds, scores, src, recency_w, agg_sum)
    for j in range(m):
        raw[2, j] = popularity[min(rows[j], unknown_row)]

    # Normalised over the eligible candidates; a signal none of them has is all zeros. One
    # pass per step over the candidates, every signal at once (a pass per signal over 7 x m
    # arrays took ~15 us more per request).
    pool = np.empty(m, dtype=np.int64)
    n_pool = 0
    tops = np.zeros(N_RAW)
    for j in range(m):
        if keep[j]:
            pool[n_pool] = j
            n_pool += 1
            for s in range(N_RAW):
                tops[s] = _np_max(tops[s], raw[s, j])
    pool = pool[:n_pool]
    weighted = np.empty((6, m))
    score = np.empty(m)
    part = np.empty(N_RAW)
    for j in range(m):
        # The boost is a share of the item's own score, so it means the same on every path:
        # added as a constant it outweighed popularity, the cold-start and fallback paths'
        # only signal (w_pop), and put any new item above the bestsellers.
        base = _weigh(raw, j, tops, weights, part, weighted)
        fresh[j] = max(base, 0.0) * fresh[j]
        score[j] = base + fresh[j]

    # The pool stable by descending score (ties in candidate order).
    order = _by_descending_score(pool, score)
    return rows, pos, weighted, fresh, tops, score, order


@njit(cache=True)
def source_contributions(top, n_candidates, pos, bounds, scores, src, n_sources, recency_w,
                         tops, weights, agg_sum):  # pragma: no cover - compiled
    """For explanations: per chosen candidate (`top`, positions among the `n_candidates`) and
    source, the score that source's own entries give it, and whether the source listed it.

    The source entries of the chosen candidates go through the pass's own `_add_raw_signals`
    and `_weigh`, per (candidate, source) cell instead of per candidate, against the request's
    maxima `tops`: "because you viewed X" follows the score's definition of every signal
    (aggregation, source weights, normalisation) without a copy of it. Popularity and the
    user's own lists belong to no source and count zero.

    Returns (value, listed), both (len(top), n_sources).
    """
    n_top = len(top)
    n_cells = n_top * n_sources
    chosen = np.full(n_candidates, -1, dtype=np.int64)
    for t in range(n_top):
        chosen[top[t]] = t
    n_src_entries = bounds[2]
    cell = np.empty(n_src_entries, dtype=np.int64)
    listed = np.zeros((n_top, n_sources), dtype=np.bool_)
    for i in range(n_src_entries):
        t = chosen[pos[i]]
        if t >= 0:
            cell[i] = t * n_sources + src[i]
            listed[t, src[i]] = True
        else:
            cell[i] = n_cells  # a spare cell takes the entries of candidates not chosen
    raw = np.zeros((N_RAW, n_cells + 1))
    source_bounds = bounds.copy()  # without the ALS user and SASRec entries: no source's
    source_bounds[3] = n_src_entries
    _add_raw_signals(raw, cell, n_src_entries, source_bounds, scores, src, recency_w, agg_sum)
    weighted = np.empty((6, n_cells + 1))
    part = np.empty(N_RAW)
    value = np.empty((n_top, n_sources))
    for t in range(n_top):
        for s in range(n_sources):
            value[t, s] = _weigh(raw, t * n_sources + s, tops, weights, part, weighted)
    return value, listed


def warm_up() -> None:
    """Compile (or load from the disk cache) before serving: the first call takes seconds."""
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
    bounds = np.zeros(4, dtype=np.int64)
    score_candidates(empty_i, 0, bounds, empty_f, empty_i, empty_f,
                     np.zeros(1, dtype=np.int32), 0, np.zeros(1), np.ones(1, dtype=np.bool_),
                     np.zeros(1, dtype=np.int32), np.zeros(1), np.zeros(1), -1, False, 0.0,
                     False, 0.0, empty_i, np.zeros(6), True, 0.0, 0.0, 14.0)
    source_contributions(empty_i, 0, empty_i, bounds, empty_f, empty_i, 1, np.zeros(1),
                         np.zeros(N_RAW), np.zeros(6), True)
