"""What fills a ranking after the scored candidates: the most popular eligible items, then,
when too few are popular, the newest catalogue items nobody interacted with yet (new
arrivals and the long tail), so that k is filled whenever the catalogue can fill it."""

from __future__ import annotations

import numpy as np

from reco.catalog import ItemIndex, newest_first
from reco.rules import Filters, eligible, first_layer_size, per_category


def popular_filler(items: ItemIndex, filters: Filters, n: int,
                   cap: int | None = None) -> np.ndarray:
    """Rows of the `n` most popular items passing the filters, at most `cap` of each category
    unless too few others exist; when fewer pass, then the newest catalogue items nobody
    interacted with (new arrivals, and the long tail), so k is filled when the catalogue can.

    Cut before the cap, a catalogue whose most popular items share one category gave a
    filler of that category only, and `diversify` had to break the cap with it. The whole
    ordering is cached per filter tuple and cap (a snapshot's popular rows change every few
    seconds), and each request takes its prefix: `n` depends on the user's seen items.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)

    def compute() -> np.ndarray:
        rows = items.popular_rows
        rows = rows[eligible(items, rows, filters)]
        return rows if cap is None else per_category(rows, items.category, cap)

    popular = items.filler((filters.key, cap), compute)
    if len(popular) >= n:  # the usual case: no work beyond the slice
        return popular[:n]
    need = n - len(popular)
    fresh, _ = items.filler((filters.key, cap, "new"),
                            lambda: _new_arrivals(items, filters, cap, need),
                            enough=lambda cached: cached[1] or len(cached[0]) >= need)
    return np.concatenate([popular, fresh[:need]])


def _new_arrivals(items: ItemIndex, filters: Filters, cap: int | None, need: int
                  ) -> tuple[np.ndarray, bool]:
    """(Eligible catalogue items without popularity, newest first, at most `cap` of each
    category per layer as `per_category` orders: at least `need` of them unless there are
    fewer; whether that is all of them).

    Read from a window of the newest rows, widened until it settles the first `need`: the cap
    applied to a fixed window gave a one-category fill when the newest 1,000+ items shared a
    category. Only the window's first layer is certain (rows past the window may still join
    it), so that is what an incomplete answer holds. A usual catalogue settles in the first
    window (~1,000 rows, not the ~100,000 of the catalogue); the worst case reads it all,
    once per popularity snapshot and filter tuple (the answer is cached by `popular_filler`).
    """
    newest = items.newest_rows()
    window = max(4 * need, 1024)
    while True:
        complete = window >= len(newest)
        rows = _unpopular_eligible(items, newest[:window], filters)
        settled = first_layer_size(rows, items.category, cap)
        if complete or settled >= need:
            break
        window *= 4  # at most ~1.33x the rows of the last window read in all
    if cap is None:
        return rows, complete
    rows = per_category(rows, items.category, cap)
    return (rows, True) if complete else (rows[:settled], False)


def _unpopular_eligible(items: ItemIndex, rows: np.ndarray, filters: Filters) -> np.ndarray:
    """`rows` without popularity (the popular ones come first already) passing the filters."""
    rows = rows[items.popularity[rows] <= 0]
    return rows[eligible(items, rows, filters)]


def newest_among_unscored(order: np.ndarray, score: np.ndarray, created_at: np.ndarray
                           ) -> np.ndarray:
    """`order` (best first) with its zero-score tail newest first: items no signal scores
    (the new-arrivals filler) would otherwise tie in row order."""
    at = int(np.searchsorted(-score[order], 0.0))  # scores are >= 0 and descending
    tail = order[at:]
    return np.concatenate([order[:at], newest_first(tail, created_at)])
