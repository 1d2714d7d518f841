"""The compiled scoring pass (reco/scoring.py) against the numpy operations it replaces."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reco.catalog import ItemIndex
from reco.ranking import RankConfig, RowList, UserFeatures, rank
from reco.scoring import _ascending, _by_descending_score, _np_max, warm_up

NOW = 1_750_000_000.0


@pytest.mark.parametrize("a, b", [(0.0, -0.0), (-0.0, 0.0), (1.0, 2.0), (2.0, 1.0),
                                  (math.nan, 1.0), (1.0, math.nan), (-1.0, -0.0)])
def test_max_is_numpys_including_signed_zeros_and_nan(a: float, b: float) -> None:
    expected = float(np.maximum(a, b))
    got = _np_max(a, b)
    assert repr(got) == repr(expected)  # repr tells 0.0 from -0.0 and shows nan


@pytest.mark.parametrize("seed", range(5))
def test_the_radix_sorts_give_numpys_stable_orders(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.choice(1 << 40, 1500, replace=False).astype(np.int64)
    assert _ascending(rows).tolist() == np.sort(rows).tolist()
    # Few distinct scores, signed zeros, negatives and subnormals: ties keep input order.
    score = rng.choice([0.0, -0.0, 0.5, -0.5, 1.0, 3e-310, -3e-310, 7.25], 2000)
    score[:500] = rng.random(500) * 1e6 - 5e5
    values = rng.permutation(2000)[:1700].astype(np.int64)
    expected = values[np.argsort(-score[values], kind="stable")]
    assert _by_descending_score(values, score).tolist() == expected.tolist()
    assert _by_descending_score(values[:0], score).tolist() == []
    # Bytes in which no key differs are skipped: all of them, or all but the lowest.
    assert _ascending(np.array([9, 9, 9], dtype=np.int64)).tolist() == [9, 9, 9]
    small = rng.integers(0, 256, 300).astype(np.int64)
    assert _ascending(small).tolist() == np.sort(small).tolist()
    same = np.full(10, 0.25)
    assert _by_descending_score(np.arange(10)[::-1].copy(), same).tolist() == list(range(9, -1, -1))


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


def test_a_process_loads_the_pass_another_compiled_into_the_cache_dir(tmp_path: Path) -> None:
    """What the Docker image relies on: warm_up() at build time fills NUMBA_CACHE_DIR, and a
    service started later loads the compiled pass (and the explanations') from there instead
    of compiling it."""
    probe = ("from reco import scoring; scoring.warm_up(); s = [f.stats for f in "
             "(scoring.score_candidates, scoring.source_contributions)]; "
             "print(*(sum(getattr(x, a).values()) for x in s for a in ('cache_hits', "
             "'cache_misses')))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def hits_and_misses() -> list[int]:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, check=True).stdout
        return [int(n) for n in out.split()]

    assert hits_and_misses() == [0, 1, 0, 1]  # compiled and written
    assert hits_and_misses() == [1, 0, 1, 0]  # loaded
