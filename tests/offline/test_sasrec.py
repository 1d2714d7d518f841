"""SASRec's own pieces, without Spark: sequences, candidates, and the served network's reuse."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spark_jobs import sasrec

PARAMS = sasrec.SASRecParams(dim=16, blocks=1, epochs=40, max_len=4, dropout=0.0,
                             learning_rate=0.01, refit_learning_rate=0.01, batch=32,
                             candidates=5)


def ring_walks(users: int = 40, items: int = 12, length: int = 6, skip_last: bool = False
               ) -> pd.DataFrame:
    """User u visits items u, u+1, ... around a ring: the next item is always the successor."""
    rows = []
    for u in range(users):
        for step in range(length - (1 if skip_last else 0)):
            rows.append((f"u{u}", f"i{(u + step) % items}", 1000.0 * u + step, f"e{u}-{step}"))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "last_ts", "last_event_id"])


def write(frame: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "part-0.parquet")
    return folder


def test_sequences_follow_last_touch_and_the_vocabulary() -> None:
    frame = pd.DataFrame({"user_id": ["b", "a", "a", "a"], "item_id": ["x", "z", "x", "y"],
                          "last_ts": [5.0, 3.0, 1.0, 2.0],
                          "last_event_id": ["e4", "e3", "e1", "e2"]})
    users, items, seqs = sasrec.user_sequences(frame)
    assert users.tolist() == ["a", "b"] and items.tolist() == ["x", "y", "z"]
    assert seqs == [[1, 2, 3], [1]]  # a: x, y, z by time; codes start at 1 (0 pads)
    _, _, known_only = sasrec.user_sequences(frame, np.asarray(["z", "x"]))
    assert known_only == [[2, 1], [2]]  # y is outside that vocabulary
    assert sasrec.left_padded([[1, 2, 3], [4]], 2).tolist() == [[2, 3], [0, 4]]


def test_sequences_order_timestamp_ties_by_event_id_not_item() -> None:
    """One MovieLens page (three items at one second) is ordered by the last events' ids, as
    the evaluation split and the processor's replay order them: the split's held-out item is
    the sequence's last."""
    from reco.evaluation_split import hold_out_last

    frame = pd.DataFrame({"user_id": ["a"] * 4, "item_id": ["w", "x", "y", "z"],
                          "last_ts": [1.0, 7.0, 7.0, 7.0],
                          "last_event_id": ["e1", "e9", "e2", "e5"]})
    _, items, seqs = sasrec.user_sequences(frame.sample(frac=1.0, random_state=1))
    assert [items[c - 1] for c in seqs[0]] == ["w", "y", "z", "x"]
    held, _ = hold_out_last(frame, "user_id", "item_id", "last_ts", tie_col="last_event_id")
    assert held["item_id"].tolist() == ["x"]


def test_windows_make_every_later_item_a_target_once() -> None:
    seq = list(range(1, 12))  # 11 items
    windows = sasrec.training_windows([seq, [7], [8, 9]], max_len=4)
    assert windows == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3], [8, 9]]
    targets = [t for w in windows[:3] for t in w[1:]]
    assert sorted(targets) == seq[1:]  # each item after the first predicted exactly once


def test_probabilities_exclude_seen_and_candidates_are_sorted() -> None:
    logits = np.array([[9.0, 1.0, 3.0, 2.0, 0.0]])
    probs = sasrec.next_item_probabilities(logits, [np.array([2])], temperature=1.0)
    assert probs[0, 0] == 0 and probs[0, 2] == 0 and probs.sum() == pytest.approx(1.0)
    idx, scores = sasrec.top_candidates(probs, 4)
    assert idx.tolist() == [[2, 0, 3, 1]]  # 0-based items: code 3 first, seen code 2 last
    assert scores[0, :3].tolist() == sorted(scores[0, :3].tolist(), reverse=True)
    assert scores[0, 3] == -np.inf  # a seen item is never a candidate
    hotter = sasrec.next_item_probabilities(logits, [np.array([2])], temperature=2.0)
    assert hotter[0, 3] / hotter[0, 4] < probs[0, 3] / probs[0, 4]


def test_learns_the_successor_and_serves_the_trained_network(tmp_path: Path) -> None:
    train_dir = write(ring_walks(skip_last=True), tmp_path / "train")
    full_dir = write(ring_walks(), tmp_path / "full")

    trained = sasrec.fit(train_dir, PARAMS)
    trained.save(tmp_path / "model")
    served = sasrec.fit(full_dir, PARAMS, warm_start=tmp_path / "model")

    items = trained.item_ids
    # After u's first five items the next is item u+5; once the sixth is known, item u+6.
    for model, step in ((trained, 5), (served, 6)):
        top = [items[row[0]] for row in model.cand_idx]
        hits = sum(t == f"i{(u + step) % 12}" for u, t in
                   zip((int(u[1:]) for u in model.user_ids), top, strict=True))
        assert hits >= 0.8 * len(top), (step, top[:10])
    # Without a refit the served network is the trained one, saved and loaded; with one it
    # starts from those weights and moves.
    as_trained = sasrec.fit(full_dir, replace(PARAMS, refit_epochs=0),
                            warm_start=tmp_path / "model")
    # Each fit records its own mean loss per epoch: the training's falls as it learns.
    assert len(trained.train_loss) == PARAMS.epochs
    assert trained.train_loss[-1] < 0.5 * trained.train_loss[0], trained.train_loss
    assert len(served.train_loss) == PARAMS.refit_epochs and as_trained.train_loss == []
    loaded = sasrec.SASRecModel.load(tmp_path / "model")
    assert set(loaded.net) == set(as_trained.net) == set(served.net)
    assert all(np.array_equal(loaded.net[n], as_trained.net[n]) for n in loaded.net)
    assert not np.array_equal(loaded.net["item"], served.net["item"])
    # The refit steps at its own rate (a rate of 0 leaves the trained network as it was).
    still = sasrec.fit(full_dir, replace(PARAMS, refit_learning_rate=0.0),
                       warm_start=tmp_path / "model")
    assert all(np.array_equal(loaded.net[n], still.net[n]) for n in loaded.net)


def test_sequences_of_one_item_train_without_a_loss_curve(tmp_path: Path) -> None:
    """No user with two items (a short window, a small shop): nothing to learn, and the
    per-epoch mean loss divided by zero batches."""
    model = sasrec.fit(write(ring_walks(length=1), tmp_path / "one"), PARAMS)
    assert model.train_loss == [] and len(model.user_ids) == 40


def test_hyperparameters_and_engine_are_checked_before_any_work() -> None:
    from spark_jobs import pipeline

    assert sasrec.SASRecParams.from_dict({"epochs": "3", "dropout": "0.1"}).epochs == 3
    with pytest.raises(ValueError, match=r"unknown sasrec parameters: \['heads'\]"):
        sasrec.SASRecParams.from_dict({"heads": 2})
    common = dict(run_dir="/tmp/x", window_days=1, window_end="2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="sasrec has no Spark engine"):
        pipeline.PipelineConfig(model="sasrec", engine="spark", **common)
    assert pipeline.PipelineConfig(model="sasrec", engine="local", **common).hyperparameters() \
        == sasrec.SASRecParams()


def test_an_extract_from_before_event_id_ties_names_the_missing_column(tmp_path: Path) -> None:
    """A retried training task after an upgrade may read an extract the previous release wrote:
    it says which column is missing and what to do, not a pyarrow field error."""
    old = write(ring_walks().drop(columns="last_event_id"), tmp_path / "old")
    with pytest.raises(ValueError, match=r"has no column last_event_id: .*older release.*again"):
        sasrec.fit(old, PARAMS)
