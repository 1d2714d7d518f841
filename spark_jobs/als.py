"""Implicit-feedback ALS with confidence weighting; one factory, two engines.

engine "local": implicit's AlternatingLeastSquares on a CSR users x items confidence matrix.
engine "spark": pyspark.ml.recommendation.ALS(implicitPrefs=True). Both return the same
`ALSModel`: factors, each user's top-k unseen candidates and each item's cosine neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spark_jobs import knn
from spark_jobs.files import MODEL_FILE, index_of, read_parquet, seen_matrix
from spark_jobs.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_ARRAYS = ("user_ids", "item_ids", "user_factors", "item_factors", "cand_idx", "cand_scores",
           "nbr_idx", "nbr_scores")


@dataclass(frozen=True)
class ALSParams(Hyperparameters):
    MODEL: ClassVar[str] = "als"

    # Tuned on MovieLens-100k validation (benchmarks/reports/tuning.md): strong regularisation.
    factors: int = 128
    regularization: float = 50.0
    iterations: int = 15
    alpha: float = 5.0
    seed: int = 42
    threads: int = 2
    candidates: int = 100
    neighbours: int = 100


@dataclass
class ALSModel:
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    cand_idx: np.ndarray  # int32 [users, k] item indices, best first, seen items excluded
    cand_scores: np.ndarray
    nbr_idx: np.ndarray  # int32 [items, k] item indices by cosine of item factors
    nbr_scores: np.ndarray

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        np.savez(path, **{name: getattr(self, name) for name in _ARRAYS})
        return path

    @classmethod
    def load(cls, out_dir: Path) -> ALSModel:
        with np.load(out_dir / MODEL_FILE) as data:
            return cls(**{name: data[name] for name in _ARRAYS})


def _fit_implicit(confidence: sp.csr_matrix, p: ALSParams) -> tuple[np.ndarray, np.ndarray]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(
        factors=p.factors, regularization=p.regularization, alpha=p.alpha,
        iterations=p.iterations, random_state=p.seed, num_threads=p.threads)
    # implicit parallelises itself; a BLAS thread pool underneath only oversubscribes.
    with threadpool_limits(1, "blas"):
        model.fit(confidence, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def _fit_spark(spark: SparkSession, frame: pd.DataFrame, n_users: int, n_items: int,
               p: ALSParams) -> tuple[np.ndarray, np.ndarray]:
    from pyspark.ml.recommendation import ALS

    ratings = spark.createDataFrame(frame[["u", "i", "confidence"]])
    als = ALS(rank=p.factors, maxIter=p.iterations, regParam=p.regularization, alpha=p.alpha,
              implicitPrefs=True, userCol="u", itemCol="i", ratingCol="confidence",
              seed=p.seed, nonnegative=False, coldStartStrategy="drop")
    model = als.fit(ratings)

    def dense(factors_df, n: int) -> np.ndarray:
        out = np.zeros((n, p.factors), np.float32)
        for row in factors_df.collect():
            out[row["id"]] = row["features"]
        return out

    return dense(model.userFactors, n_users), dense(model.itemFactors, n_items)


def fit(interactions_dir: Path, params: ALSParams, engine: str = "local",
        spark: SparkSession | None = None, timings: dict | None = None) -> ALSModel:
    """Train on the extract's interactions; candidates exclude each user's seen items."""
    timings = timings if timings is not None else {}
    frame = read_parquet(interactions_dir, ["user_id", "item_id", "confidence"])
    if frame.empty:
        raise ValueError("no interactions in the window: nothing to train on")
    user_ids = np.asarray(sorted(frame["user_id"].unique()), dtype=str)
    item_ids = np.asarray(sorted(frame["item_id"].unique()), dtype=str)
    users, items = index_of(user_ids), index_of(item_ids)
    confidence = seen_matrix(frame, users, items, value_col="confidence")
    started = time.perf_counter()
    if engine == "local":
        user_f, item_f = _fit_implicit(confidence, params)
    elif engine == "spark":
        if spark is None:
            raise ValueError("engine 'spark' needs a SparkSession")
        frame = frame.assign(u=frame["user_id"].map(users).astype(np.int32),
                             i=frame["item_id"].map(items).astype(np.int32))
        user_f, item_f = _fit_spark(spark, frame, len(user_ids), len(item_ids), params)
    else:
        raise ValueError(f"unknown engine {engine!r}: expected 'local' or 'spark'")
    timings["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    cand_idx, cand_scores = knn.top_k_excluding(user_f, item_f, params.candidates, confidence)
    nbr_idx, nbr_scores = knn.item_neighbours(item_f, params.neighbours, params.threads)
    timings["neighbours_s"] = time.perf_counter() - started
    return ALSModel(user_ids, item_ids, user_f.astype(np.float32), item_f.astype(np.float32),
                    cand_idx, cand_scores, nbr_idx, nbr_scores)

