"""Top-k by inner product / cosine over dense vectors: shared by both models and both engines."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def normalize(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def item_neighbours(vectors: np.ndarray, k: int, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Each item's k most cosine-similar other items: (indices int32 [n, k'], scores [n, k'])."""
    import faiss

    faiss.omp_set_num_threads(threads)
    unit = normalize(vectors)
    n = unit.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    scores, idx = index.search(unit, k + 1)
    # Drop each item itself (normally in column 0, but ties can move it).
    is_self = idx == np.arange(n)[:, None]
    has_self = is_self.any(axis=1)
    drop = np.where(has_self, is_self.argmax(axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    out_idx = idx[keep].reshape(n, k).astype(np.int32)
    out_scores = scores[keep].reshape(n, k).astype(np.float32)
    return out_idx, out_scores


def top_k_excluding(queries: np.ndarray, items: np.ndarray, k: int,
                    exclude: sp.csr_matrix | None = None,
                    batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Full ranking of every item per query row by inner product, minus excluded (seen) items."""
    n_items = items.shape[0]
    k = min(k, n_items)
    items_t = np.ascontiguousarray(items, dtype=np.float32).T
    out_idx = np.zeros((queries.shape[0], k), np.int32)
    out_scores = np.zeros((queries.shape[0], k), np.float32)
    for lo in range(0, queries.shape[0], batch):
        hi = min(lo + batch, queries.shape[0])
        scores = queries[lo:hi].astype(np.float32) @ items_t
        if exclude is not None:
            block = exclude[lo:hi].tocoo()
            scores[block.row, block.col] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        out_idx[lo:hi] = np.take_along_axis(top, order, axis=1)
        out_scores[lo:hi] = np.take_along_axis(top_scores, order, axis=1)
    return out_idx, out_scores
