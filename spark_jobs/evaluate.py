"""Offline evaluation: temporal leave-last-out with full ranking over unseen items.

Each evaluated user's last interaction is held out by the extract; a scorer gives every
catalogue item a score, seen items are excluded, and the held-out item's exact rank yields
HR@k, NDCG@k, MRR@k; coverage is the share of the catalogue in anyone's top k.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from reco.event_order import newest_distinct
from spark_jobs import extract as ex
from spark_jobs import knn
from spark_jobs.files import index_of, read_parquet, seen_matrix

REPORT = "evaluation.json"
CURVE_MAX_K = 100
# A scorer maps a batch of user rows to scores over the catalogue ([batch, n_items]).
Scorer = Callable[[np.ndarray], np.ndarray]


class EvalData:
    """The held-out set and training history, indexed over one catalogue."""

    def __init__(self, extract_dir: Path, max_users: int | None = None, seed: int = 0):
        inter = read_parquet(extract_dir / ex.INTERACTIONS, ["user_id", "item_id", "confidence"])
        held = read_parquet(extract_dir / ex.HOLDOUT, ["user_id", "item_id"])
        if max_users and len(held) > max_users:
            held = held.sample(n=max_users, random_state=seed)
        self.held = held.sort_values("user_id").reset_index(drop=True)
        self.item_ids = np.asarray(sorted(inter["item_id"].unique()), dtype=str)
        self.items = index_of(self.item_ids)
        self.user_ids = self.held["user_id"].to_numpy(str)
        self.users = index_of(self.user_ids)
        self.seen = seen_matrix(inter, self.users, self.items)
        self.target = self.held["item_id"].map(self.items).fillna(-1).to_numpy(np.int64)
        pop = inter.groupby("item_id")["confidence"].sum()
        self.popularity = pop.reindex(self.item_ids).fillna(0).to_numpy(np.float32)
        self.extract_dir = extract_dir
        self.split = split_digest(inter, self.held)

    def recent_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(user row, catalogue row) of each evaluated user's last n distinct training items,
        newest first in event order (the processor's recent list)."""
        events = read_parquet(self.extract_dir / ex.TRAIN_EVENTS,
                              ["user_id", "item_id", "ts", "event_id"])
        user = pd.Index(self.user_ids).get_indexer(events["user_id"])
        item = pd.Index(self.item_ids).get_indexer(events["item_id"])
        keep = (user >= 0) & (item >= 0)
        frame = pd.DataFrame({"user": user[keep], "item": item[keep],
                              "ts": events["ts"].to_numpy()[keep],
                              "event_id": events["event_id"].to_numpy()[keep]})
        frame = newest_distinct(frame, n, user_col="user", item_col="item")
        return frame["user"].to_numpy(np.int64), frame["item"].to_numpy(np.int64)


def split_digest(interactions: pd.DataFrame, held: pd.DataFrame) -> str:
    """A fingerprint of what a model is scored on: the (user, item) pairs of its training
    interactions and of the held-out set. Two runs' metrics compare directly only when their
    digests are equal (the gate compares a new run with the champion's logged score).
    Confidences are left out: they decay to the window's end, so a retraining on the same
    events would never match."""
    digest = hashlib.blake2b(digest_size=16)
    for frame in (interactions, held):
        pairs = frame[["user_id", "item_id"]]
        rows = np.sort(pd.util.hash_pandas_object(pairs, index=False).to_numpy())
        digest.update(len(rows).to_bytes(8, "little"))
        digest.update(rows.tobytes())
    return digest.hexdigest()


def ranks(data: EvalData, scorer: Scorer, k: int, batch: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1-based, ties shared; inf when unrankable) of each held-out item, and every user's
    top-k."""
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    batch = batch or max(64, min(2048, 20_000_000 // max(1, n_items)))
    out = np.full(n_users, np.inf)
    tops = np.zeros((n_users, min(k, n_items)), np.int64)
    for lo in range(0, n_users, batch):
        hi = min(lo + batch, n_users)
        scores = scorer(np.arange(lo, hi)).astype(np.float32)
        block = data.seen[lo:hi].tocoo()
        scores[block.row, block.col] = -np.inf
        target = data.target[lo:hi]
        rows = np.arange(hi - lo)
        valid = target >= 0
        held_score = np.where(valid, scores[rows, np.maximum(target, 0)], -np.inf)
        better = (scores > held_score[:, None]).sum(axis=1)
        # Items scored the same as the held-out one share the places they span (the expected
        # rank under a random tie-break): a user whose scores are all equal, such as one none
        # of whose items Item2Vec knows (a zero query vector), ranks in the middle, not first.
        ties = (scores == held_score[:, None]).sum(axis=1) - 1
        out[lo:hi] = np.where(np.isfinite(held_score), better + 1 + ties / 2, np.inf)
        top = np.argpartition(-scores, tops.shape[1] - 1, axis=1)[:, :tops.shape[1]]
        # Places no score fills (fewer than k items scored: SASRec's candidate lists) hold
        # arbitrary -inf items: -1, which coverage leaves out. (A user ALS or Item2Vec does
        # not know scores 0 everywhere: a tie, still counted.)
        top[~np.isfinite(scores[rows[:, None], top])] = -1
        tops[lo:hi] = top
    return out, tops


def metrics(rank: np.ndarray, tops: np.ndarray, n_items: int, k: int) -> dict[str, float]:
    hit = rank <= k
    return {
        f"hr_at_{k}": float(hit.mean()) if len(rank) else 0.0,
        f"ndcg_at_{k}": float(np.where(hit, 1.0 / np.log2(rank + 1), 0.0).mean()) if len(rank)
        else 0.0,
        f"mrr_at_{k}": float(np.where(hit, 1.0 / rank, 0.0).mean()) if len(rank) else 0.0,
        "coverage": float(len(np.unique(tops[tops >= 0])) / n_items) if n_items else 0.0,
        "users": int(len(rank)),
    }


def hit_curve(rank: np.ndarray, max_k: int = CURVE_MAX_K) -> list[float]:
    return [float((rank <= k).mean()) if len(rank) else 0.0 for k in range(1, max_k + 1)]


def popularity_scorer(data: EvalData) -> Scorer:
    return lambda rows: np.broadcast_to(data.popularity, (len(rows), len(data.popularity))).copy()


def _catalogue_rows(data: EvalData, model_ids: np.ndarray) -> np.ndarray:
    """Each catalogue item's row in a model's id array, -1 where the model does not know it."""
    return pd.Index(np.asarray(model_ids, dtype=str)).get_indexer(data.item_ids)


def item2vec_scorer(data: EvalData, item_ids: np.ndarray, vectors: np.ndarray,
                    recent_n: int) -> Scorer:
    """Score = cosine between each item and the mean of the user's recent items' vectors."""
    unit = knn.normalize(vectors)
    model_row = _catalogue_rows(data, item_ids)
    in_vocab = model_row >= 0
    catalogue_unit = np.zeros((len(data.item_ids), unit.shape[1]), np.float32)
    catalogue_unit[in_vocab] = unit[model_row[in_vocab]]
    # Mean of the unit vectors of each user's recent items that the model knows.
    users, items = data.recent_rows(recent_n)
    known = in_vocab[items]
    users, items = users[known], items[known]
    pick = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)),
                         shape=(len(data.user_ids), len(data.item_ids)))
    counts = np.bincount(users, minlength=len(data.user_ids)).astype(np.float32)
    queries = np.asarray(pick @ catalogue_unit, dtype=np.float32)
    queries /= np.maximum(counts, 1.0)[:, None]

    def score(rows: np.ndarray) -> np.ndarray:
        scores = queries[rows] @ catalogue_unit.T
        scores[:, ~in_vocab] = -np.inf
        return scores

    return score


def als_scorer(data: EvalData, user_ids: np.ndarray, item_ids: np.ndarray,
               user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    user_row = pd.Index(np.asarray(user_ids, dtype=str)).get_indexer(data.user_ids)
    q = np.zeros((len(data.user_ids), user_factors.shape[1]), np.float32)
    q[user_row >= 0] = user_factors[user_row[user_row >= 0]]
    item_row = _catalogue_rows(data, item_ids)
    known = item_row >= 0
    cat = np.zeros((len(data.item_ids), item_factors.shape[1]), np.float32)
    cat[known] = item_factors[item_row[known]]

    def score(rows: np.ndarray) -> np.ndarray:
        scores = q[rows] @ cat.T
        scores[:, ~known] = -np.inf
        return scores

    return score


def candidates_scorer(data: EvalData, user_ids: np.ndarray, item_ids: np.ndarray,
                      cand_idx: np.ndarray, cand_scores: np.ndarray) -> Scorer:
    """Score = the model's published per-user candidate score; -inf off the list (exact
    ranks within the list's length, which bounds the k it can be evaluated at)."""
    user_row = pd.Index(np.asarray(user_ids, dtype=str)).get_indexer(data.user_ids)
    to_catalogue = pd.Index(data.item_ids).get_indexer(np.asarray(item_ids, dtype=str))

    def score(rows: np.ndarray) -> np.ndarray:
        scores = np.full((len(rows), len(data.item_ids)), -np.inf, np.float32)
        for out, r in enumerate(user_row[rows].tolist()):
            if r < 0:
                continue
            cols = to_catalogue[cand_idx[r]]
            ok = (cols >= 0) & np.isfinite(cand_scores[r])
            scores[out, cols[ok]] = cand_scores[r][ok]
        return scores

    return score


def evaluate_blend(data: EvalData, model_name: str, model_dir: Path, k: int,
                   rank_config: dict, feature_params: dict, coview_max: int,
                   max_users: int = 2000, replay_s: float = 7 * 86400.0) -> dict:
    """The full blend scored with reco.ranking (the API's ranking code); see spark_jobs.blend."""
    from spark_jobs import blend

    return blend.evaluate(data, model_name, model_dir, k, rank_config, feature_params,
                          coview_max=coview_max, max_users=max_users, replay_s=replay_s)


def evaluate(data: EvalData, scorers: dict[str, Scorer], k: int) -> dict:
    """Metrics and hit-rate curves of each named scorer on the same users."""
    out: dict = {"k": k, "catalogue": len(data.item_ids), "evaluated_users": len(data.user_ids),
                 "split": data.split, "results": {}, "curves": {}}
    for name, scorer in scorers.items():
        rank, tops = ranks(data, scorer, k)
        out["results"][name] = metrics(rank, tops, len(data.item_ids), k)
        out["curves"][name] = hit_curve(rank)
    return out


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """evaluation.json plus two PNG plots (metrics by scorer; hit rate by cut-off)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / REPORT]
    paths[0].write_text(json.dumps(report, indent=2))
    k, results = report["k"], report["results"]
    names = [f"hr_at_{k}", f"ndcg_at_{k}", f"mrr_at_{k}", "coverage"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(results))
    for n, (scorer, values) in enumerate(results.items()):
        ax.bar(np.arange(len(names)) + n * width, [values[m] for m in names], width, label=scorer)
    ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, names)
    ax.set_title(f"Leave-last-out, {report['evaluated_users']} users")
    ax.legend()
    paths.append(out_dir / "metrics.png")
    fig.savefig(paths[-1], dpi=80, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for scorer, curve in report["curves"].items():
        ax.plot(range(1, len(curve) + 1), curve, label=scorer)
    ax.set_xlabel("cut-off k")
    ax.set_ylabel("hit rate")
    ax.legend()
    paths.append(out_dir / "hit_rate_curve.png")
    fig.savefig(paths[-1], dpi=80, bbox_inches="tight")
    plt.close(fig)
    return paths
