"""What fills a ranking after the scored candidates: the most popular eligible items, then,
when too few are popular, the newest catalogue items nobody interacted with yet (new
arrivals and the long tail), so that k is filled whenever the catalogue can fill it."""

from __future__ import annotations

import numpy as np

from reco.catalog import ItemIndex, newest_first
from reco.rules import Filters, eligible, per_category


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
                            lambda: _new_arrivals(items, filters, cap, max(4 * need, 1024)),
                            enough=lambda cached: cached[1] or len(cached[0]) >= need)
    return np.concatenate([popular, fresh[:need]])


def _new_arrivals(items: ItemIndex, filters: Filters, cap: int | None, limit: int
                  ) -> tuple[np.ndarray, bool]:
    """(Up to `limit` rows of eligible catalogue items without popularity, newest first, at
    most `cap` of each category per layer as `per_category` orders; whether that is all)."""
    rows = items.newest_rows()
    rows = rows[items.popularity[rows] <= 0]  # the popular ones come first already
    rows = rows[eligible(items, rows, filters)]
    complete = len(rows) <= limit
    rows = rows[:limit]
    return (rows if cap is None else per_category(rows, items.category, cap)), complete


def newest_among_unscored(order: np.ndarray, score: np.ndarray, created_at: np.ndarray
                           ) -> np.ndarray:
    """`order` (best first) with its zero-score tail newest first: items no signal scores
    (the new-arrivals filler) would otherwise tie in row order."""
    at = int(np.searchsorted(-score[order], 0.0))  # scores are >= 0 and descending
    tail = order[at:]
    return np.concatenate([order[:at], newest_first(tail, created_at)])
