"""Item2Vec: skip-gram with negative sampling over sessions; one factory, two engines.

engine "local": gensim Word2Vec (sg=1). engine "spark": pyspark.ml.feature.Word2Vec (Spark's
skip-gram uses hierarchical softmax, so negative / ns_exponent / sample do not apply there).
Both return the same `Item2VecModel`: item ids, vectors and top-k cosine neighbours.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from spark_jobs import BadRunInput, knn
from spark_jobs.files import MODEL_FILE, read_parquet
from spark_jobs.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from gensim.models import Word2Vec
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class Item2VecParams(Hyperparameters):
    MODEL: ClassVar[str] = "item2vec"
    NOT_USED_BY: ClassVar[dict[str, tuple[frozenset[str], str]]] = {
        "spark": (frozenset({"negative", "ns_exponent", "sample"}),
                  "Spark's Word2Vec trains with hierarchical softmax, without negative "
                  "sampling or subsampling"),
    }

    vector_size: int = 128
    # Tuned on MovieLens-100k validation (benchmarks/reports/tuning.md), not NLP defaults:
    # short window, more epochs, flat negative sampling (ns_exponent 0), stronger subsampling.
    window: int = 3
    epochs: int = 30
    negative: int = 5
    ns_exponent: float = 0.0
    sample: float = 1e-4
    min_count: int = 1
    alpha: float = 0.025
    seed: int = 42
    workers: int = 2
    neighbours: int = 100


@dataclass
class Item2VecModel:
    item_ids: np.ndarray  # str, shape [n]
    vectors: np.ndarray  # float32 [n, dim]
    nbr_idx: np.ndarray  # int32 [n, k] indices into item_ids, best first
    nbr_scores: np.ndarray  # float32 [n, k] cosine similarity

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        np.savez(path, item_ids=self.item_ids.astype(str), vectors=self.vectors,
                 nbr_idx=self.nbr_idx, nbr_scores=self.nbr_scores)
        return path

    @classmethod
    def load(cls, out_dir: Path) -> Item2VecModel:
        with np.load(out_dir / MODEL_FILE) as data:
            return cls(**{name: data[name] for name in ("item_ids", "vectors", "nbr_idx",
                                                       "nbr_scores")})


def read_sessions(sessions_dir: Path) -> list[list[str]]:
    frame = read_parquet(sessions_dir, ["items"])
    return [list(items) for items in frame["items"]]


def train_gensim(sentences: list[list[str]], p: Item2VecParams) -> Word2Vec:
    """The local engine's skip-gram with negative sampling, whole (experiments read its output
    vectors, `syn1neg`, which the published model does not keep)."""
    from gensim.models import Word2Vec

    return Word2Vec(
        sentences=sentences, vector_size=p.vector_size, window=p.window, min_count=p.min_count,
        sg=1, hs=0, negative=p.negative, ns_exponent=p.ns_exponent, sample=p.sample,
        epochs=p.epochs, alpha=p.alpha, seed=p.seed, workers=p.workers,
    )


def _fit_gensim(sentences: list[list[str]], p: Item2VecParams) -> tuple[np.ndarray, np.ndarray]:
    counts = Counter(chain.from_iterable(sentences))
    if not any(n >= p.min_count for n in counts.values()):  # gensim: "build vocabulary first"
        return np.empty(0, dtype=str), np.empty((0, p.vector_size), dtype=np.float32)
    model = train_gensim(sentences, p)
    return np.asarray(model.wv.index_to_key, dtype=str), model.wv.vectors.astype(np.float32)


def _fit_spark(spark: SparkSession, sessions_dir: Path,
               p: Item2VecParams) -> tuple[np.ndarray, np.ndarray]:
    from pyspark.ml.feature import Word2Vec
    from pyspark.sql import functions as F

    sessions = spark.read.parquet(str(sessions_dir)).select("items")
    counts = sessions.select(F.explode("items").alias("item")).groupBy("item").count()
    # No item seen min_count times: Spark's "vocabulary size should be > 0", which Airflow
    # would retry; `fit` says why instead.
    if counts.where(F.col("count") >= p.min_count).limit(1).count() == 0:
        return np.empty(0, dtype=str), np.empty((0, p.vector_size), dtype=np.float32)
    w2v = Word2Vec(vectorSize=p.vector_size, windowSize=p.window, minCount=p.min_count,
                   maxIter=p.epochs, stepSize=p.alpha, seed=p.seed, inputCol="items",
                   numPartitions=1)
    rows = w2v.fit(sessions).getVectors().collect()
    ids = np.asarray([r["word"] for r in rows], dtype=str)
    vectors = np.asarray([r["vector"].toArray() for r in rows], dtype=np.float32)
    return ids, vectors.reshape(len(rows), p.vector_size)


def fit(sessions_dir: Path, params: Item2VecParams, engine: str = "local",
        spark: SparkSession | None = None, timings: dict | None = None) -> Item2VecModel:
    """Train on the extract's sessions with the chosen engine; compute cosine neighbours."""
    timings = timings if timings is not None else {}
    started = time.perf_counter()
    if engine == "local":
        ids, vectors = _fit_gensim(read_sessions(sessions_dir), params)
    elif engine == "spark":
        if spark is None:
            raise ValueError("engine 'spark' needs a SparkSession")
        ids, vectors = _fit_spark(spark, sessions_dir, params)
    else:
        raise ValueError(f"unknown engine {engine!r}: expected 'local' or 'spark'")
    if len(ids) == 0:
        raise BadRunInput("no sessions with two or more items in the window (or no item seen "
                          "min_count times): nothing to train on")
    timings["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    nbr_idx, nbr_scores = knn.item_neighbours(vectors, params.neighbours, params.workers)
    timings["neighbours_s"] = time.perf_counter() - started
    return Item2VecModel(ids, vectors, nbr_idx, nbr_scores)

