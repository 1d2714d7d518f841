"""Leave-last-out ranks: ties share their places (spark_jobs/evaluate.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from spark_jobs.evaluate import metrics, ranks


def data(targets: list[int], items: int, seen: list[tuple[int, int]] = ()) -> SimpleNamespace:
    users = len(targets)
    rows, cols = zip(*seen, strict=True) if seen else ((), ())
    return SimpleNamespace(
        user_ids=np.array([f"u{n}" for n in range(users)]),
        item_ids=np.array([f"i{n}" for n in range(items)]),
        target=np.array(targets), seen=sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(users, items)))


def test_a_user_whose_scores_are_all_equal_ranks_in_the_middle_not_first() -> None:
    """Item2Vec scores a user none of whose items it knows with a zero vector: every item 0.
    Counting only strictly better items gave that user rank 1, a perfect hit for the gate."""
    rank, _ = ranks(data([2], items=21), lambda rows: np.zeros((len(rows), 21)), k=10)
    assert rank.tolist() == [11.0]  # 20 others tie: places 1..21, 11 on average
    assert metrics(rank, np.zeros((1, 10), int), 21, 10)["hr_at_10"] == 0.0


def test_ranks_count_better_items_and_half_the_ties_among_unseen_ones() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1],    # held 2: 1 better, 2 ties
                       [0.9, 0.8, 0.7, 0.6, 0.1]])   # held 3: 3 better, 1 of them seen
    rank, _ = ranks(data([2, 3], items=5, seen=[(1, 0)]), lambda rows: scores[rows], k=2)
    assert rank.tolist() == [pytest.approx(3.0), 3.0]
