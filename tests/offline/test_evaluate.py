"""Leave-last-out ranks (ties share their places), and the blend's co-view bound
(spark_jobs/evaluate.py, spark_jobs/blend.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from reco.ranking import RankConfig
from reco.settings import Settings
from spark_jobs import extract as ex
from spark_jobs import pipeline
from spark_jobs.evaluate import EvalData, evaluate_blend, metrics, ranks


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


def test_coverage_counts_only_the_items_a_scorer_ranked() -> None:
    """A user scored on 2 items (SASRec's candidates, -inf elsewhere) got a top 10 padded with
    arbitrary unscored items, and coverage counted them."""
    scores = np.full((3, 50), -np.inf)
    scores[0, [4, 7]] = [0.9, 0.5]
    scores[1, [7]] = 0.3  # the third user: no score at all
    rank, tops = ranks(data([7, 7, 1], items=50), lambda rows: scores[rows], k=10)
    assert rank.tolist() == [2.0, 1.0, np.inf]
    assert sorted(tops[0][tops[0] >= 0]) == [4, 7] and (tops[2] == -1).all()
    assert metrics(rank, tops, 50, 10)["coverage"] == 2 / 50


def tiny_extract(folder: Path) -> Path:
    """Five users view a then x, two view a then t; u0 viewed a, then (held out) t."""
    views = [(f"w{n}", item, 1000.0 * n + dt) for n in range(5) for item, dt in (("a", 0),
                                                                               ("x", 60))]
    views += [(f"t{n}", item, 9000.0 + 1000.0 * n + dt) for n in range(2)
              for item, dt in (("a", 0), ("t", 60))]
    views += [("u0", "a", 20_000.0)]
    events = pd.DataFrame(views, columns=["user_id", "item_id", "ts"]).assign(
        event_type="view", event_id=[f"e{n}" for n in range(len(views))])
    folder.mkdir()
    events.to_parquet(folder / ex.TRAIN_EVENTS)
    events.assign(confidence=1.0)[["user_id", "item_id", "confidence"]].to_parquet(
        folder / ex.INTERACTIONS)
    pd.DataFrame({"user_id": ["u0"], "item_id": ["t"], "ts": [20_060.0],
                  "event_id": ["e99"]}).to_parquet(folder / ex.HOLDOUT)
    return folder


def test_the_blend_keeps_as_many_coview_partners_as_the_processor(tmp_path):
    """RECO_COVIEW_MAX bounds the co-view sets the API reads; the offline blend kept 200
    whatever it said, so it measured lists the API never sees."""
    extract_dir = tiny_extract(tmp_path / "extract")
    items = np.array(["a", "t", "x"])
    np.savez(tmp_path / "model.npz", item_ids=items, nbr_idx=np.zeros((3, 1), np.int32),
             nbr_scores=np.full((3, 1), -np.inf, np.float32))  # no embedding neighbours
    rank_config = asdict(RankConfig(w_coview=1.0, w_embed=0.0, w_pop=0.0, w_recency=0.0,
                                    popular_filler_n=0, max_category_share=1.0))

    def hit_rate(coview_max: int) -> float:
        cfg = pipeline.config_from_settings(Settings(coview_max=coview_max), "item2vec",
                                            run_dir=tmp_path / "run", rank_config=rank_config)
        blend = evaluate_blend(EvalData(extract_dir), "item2vec", tmp_path, 2, cfg.rank_config,
                               cfg.feature_params, cfg.coview_max)
        return blend["metrics"]["hr_at_2"]

    # a's co-view set is {x: 5, t: 2}: t, u0's next item, is its second partner.
    assert hit_rate(200) == 1.0
    assert hit_rate(1) == 0.0
