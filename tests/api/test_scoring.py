"""The compiled scoring pass (reco/scoring.py) against the numpy operations it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reco.catalog import ItemIndex
from reco.ranking import RankConfig, RowList, UserFeatures, rank
from reco.scoring import _np_max, warm_up

NOW = 1_750_000_000.0


@pytest.mark.parametrize("a, b", [(0.0, -0.0), (-0.0, 0.0), (1.0, 2.0), (2.0, 1.0),
                                  (math.nan, 1.0), (1.0, math.nan), (-1.0, -0.0)])
def test_max_is_numpys_including_signed_zeros_and_nan(a: float, b: float) -> None:
    expected = float(np.maximum(a, b))
    got = _np_max(a, b)
    assert repr(got) == repr(expected)  # repr tells 0.0 from -0.0 and shows nan


def test_ties_keep_candidate_order_and_sums_add_in_list_order() -> None:
    warm_up()
    items = ItemIndex.build({f"i{n}": {"category": f"c{n % 7}"} for n in range(300)})
    # 200 equal co-view scores from one source: the head of the ranking is a stable sort, so
    # equal scores come out in row order; every score is the same float.
    rows = np.arange(1, 201, dtype=np.int64)[::-1].copy()
    features = UserFeatures(["i0"], {"i0": NOW}, NOW,
                            coview={"i0": RowList(rows, np.full(200, 0.1))})
    config = RankConfig(w_coview=1.0, w_embed=0.0, w_pop=0.0, w_recency=0.0,
                        neighbours_n=200, popular_filler_n=0, max_category_share=1.0,
                        freshness_boost=0.0)
    got = rank(features, items, config, k=30).items
    assert [i.item_id for i in got] == [f"i{n}" for n in range(1, 31)]
    assert {i.score for i in got} == {1.0}
    # i5's co-view adds 0.1, 0.2, 0.3 in source order: 0.6000000000000001, not 0.6.
    three = UserFeatures(["i0", "i1", "i2"], {}, NOW, coview={
        "i0": RowList(np.array([5]), np.array([0.1])),
        "i1": RowList(np.array([5, 6]), np.array([0.2, 0.6])),
        "i2": RowList(np.array([5]), np.array([0.3]))})
    scores = {i.item_id: i.score for i in rank(three, items, config, k=2).items}
    assert 0.1 + 0.2 + 0.3 != 0.6
    assert scores == {"i5": 1.0, "i6": 0.6 / (0.1 + 0.2 + 0.3)}
