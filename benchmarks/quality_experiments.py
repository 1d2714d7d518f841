"""Quality ideas tried on MovieLens-100k VALIDATION, kept so their results can be reproduced.

Every experiment starts from the served configuration (`tune_quality.served_choice`) and
changes one thing; the protocol and the features are those of `tune_quality.py` (temporal
leave-last-out, full ranking over unseen items, k=10, the served blend). Nothing here touches
the test split.

1. directional co-view: the earlier item of a pair gains `forward` weight towards the later one,
   the later one `backward` towards the earlier one (the processor uses 1 / 1), and partners
   further back in the user's recent list count `decay**position`;
2. co-view normalised by the candidate's co-view degree (score / degree**beta, degree = the sum of
   all its pair increments), applied to the top-`neighbours_n` entries as the API reads them;
3. Item2Vec trained on each user's whole history as one sequence instead of 30-minute sessions;
4. EASE (Steck 2019), a closed-form item-item model, alone, all seen items excluded;
5. a learned second stage: gradient-boosted trees and logistic regression over the blend's
   per-signal values of its top-200 candidates, two-fold cross-validated over users;
6. Item2Vec neighbours scored input-vector . output-vector (the skip-gram's own estimate that
   one item appears in the other's context, raw or through the sigmoid) instead of the cosine
   of two input vectors; gensim only (Spark's Word2Vec does not expose output vectors).

Run: .venv/bin/python benchmarks/quality_experiments.py   (about 12 minutes on 2 cores)
Writes benchmarks/reports/quality_experiments.md.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tune_quality as tq  # noqa: E402

from reco.evaluation_split import hit_rate_at_k, ndcg_at_k  # noqa: E402
from reco.features import RecentItems, coview_partners  # noqa: E402
from reco.ranking import RankConfig, rank  # noqa: E402
from reco.rules import Filters  # noqa: E402
from spark_jobs import item2vec as i2v_job  # noqa: E402

REPORT = ROOT / "benchmarks" / "reports" / "quality_experiments.md"
COVIEW_MAX = 200


def directional_coview(split: tq.Split, window_s: float, forward: float, backward: float,
                       decay: float) -> tuple[dict, dict, dict[str, float]]:
    """The processor's co-view replay with direction and position weights; also each item's
    degree (sum of all its increments, before the sets are cut to COVIEW_MAX).

    Not `plan_batch` itself: it adds 1 both ways whatever the direction and position, and has
    no parameter for either. The partners and the recent list are the processor's own
    (`coview_partners`, `RecentItems.touch`, the split's FeatureParams); with 1 / 1 / 1 the
    lists are the processor's as they were before its affinity decayed (plain counts)."""
    recent: dict[str, RecentItems] = {}
    pairs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    params = split.params
    rows = split.ordered[["user_id", "item_id", "ts"]].itertuples(index=False, name=None)
    for user, item, t in rows:
        state = recent.setdefault(user, RecentItems())
        for p, other in enumerate(coview_partners(state.items, state.times, item, t,
                                                  params.coview_recent_n, window_s)):
            pairs[other][item] += forward * decay ** p
            pairs[item][other] += backward * decay ** p
        state.touch(item, t, params.recent_max)
    lists = {}
    for item, partners in pairs.items():
        top = sorted(partners.items(), key=lambda kv: -kv[1])[:COVIEW_MAX]
        lists[item] = ([p for p, _ in top], np.asarray([s for _, s in top]))
    degree = {item: float(sum(p.values())) for item, p in pairs.items()}
    return ({u: (list(s.items), dict(s.times)) for u, s in recent.items()}, lists, degree)


def with_coview(split: tq.Split, knobs: dict, recent: dict, lists: dict) -> None:
    split._recent, split._coview = recent, {knobs["coview_window_s"]: lists}


def ease_alone(split, lam: float) -> dict:
    users = sorted(split.known["user_id"].unique())
    items = sorted(split.known["item_id"].unique())
    u_at, i_at = {u: j for j, u in enumerate(users)}, {x: j for j, x in enumerate(items)}
    x = np.zeros((len(users), len(items)))
    x[split.known["user_id"].map(u_at).to_numpy(), split.known["item_id"].map(i_at).to_numpy()] = 1
    p = np.linalg.inv(x.T @ x + lam * np.eye(len(items)))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    scores = x @ b
    scores[x > 0] = -np.inf
    ranks = []
    for user, target in split.targets.items():
        row = scores[u_at[user]]
        ranks.append(1 + int((row > row[i_at[target]]).sum()) if target in i_at else np.inf)
    r = np.asarray(ranks, dtype=float)
    return {"hr": hit_rate_at_k(r, tq.K), "ndcg": ndcg_at_k(r, tq.K)}


def second_stage(split, cfg: RankConfig, knobs: dict, knn: dict, cf: dict) -> dict[str, dict]:
    """Two-fold (by user) learned re-ranking of the blend's top 200 versus the blend itself."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    index = split.index(knobs["pop_half_life_h"])
    # user_features reads a signal's lists only when its weight is > 0; the signals are divided
    # by their weights below, so every weight is > 0 here and every list is read.
    features = tq.user_features(split, cfg, knobs, knn, cf)
    feats, labels, groups = [], [], []
    weights = (cfg.w_coview, cfg.w_embed, cfg.w_pop, cfg.w_recency, cfg.w_cf)
    for g, (user, target) in enumerate(split.targets.items()):
        f = features[user]
        items = f.recent
        for pos, it in enumerate(rank(f, index, cfg, Filters(), 200, explain=True).items):
            c = it.contributions
            signals = [c[n] / w for n, w in zip(("coview", "embedding", "popularity", "recency",
                                                 "cf"), weights, strict=True)]
            feats.append([*signals, it.score, pos, len(items)])
            labels.append(it.item_id == target)
            groups.append(g)
    x, y, g = np.asarray(feats), np.asarray(labels), np.asarray(groups)
    fold = np.random.default_rng(0).integers(0, 2, len(split.targets))[g]

    def metrics(score: np.ndarray, mask: np.ndarray) -> dict:
        ranks = []
        for u in np.unique(g[mask]):
            m = mask & (g == u)
            ranks.append(1 + int((score[m] > score[m][y[m]][0]).sum()) if y[m].any() else np.inf)
        r = np.asarray(ranks, dtype=float)
        return {"hr": hit_rate_at_k(r, tq.K), "ndcg": ndcg_at_k(r, tq.K)}

    out: dict[str, list] = defaultdict(list)
    for k in (0, 1):
        train, test = fold != k, fold == k
        out["blend (top 200 kept)"].append(metrics(-x[:, 6], test))
        gbdt = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                              max_leaf_nodes=15, random_state=0)
        out["gradient-boosted trees"].append(metrics(gbdt.fit(x[train], y[train])
                                                     .predict_proba(x)[:, 1], test))
        logreg = LogisticRegression(max_iter=1000).fit(x[train][:, :5], y[train])
        out["logistic regression on the 5 signals"].append(
            metrics(logreg.decision_function(x[:, :5]), test))
    return {n: {m: float(np.mean([f[m] for f in folds])) for m in ("hr", "ndcg")}
            for n, folds in out.items()}


def in_out_lists(split: tq.Split, p: i2v_job.Item2VecParams, gap_s: float, score: str,
                 k: int = 100) -> dict:
    """Each item's top-k partners by in . out (score "dot") or sigmoid(in . out) ("sigmoid"),
    from the local engine's own skip-gram trained on the extract's sessions."""
    m = i2v_job.train_gensim(i2v_job.read_sessions(split.sessions(gap_s)), p)
    ids = np.asarray(m.wv.index_to_key)
    scores = m.wv.vectors @ m.syn1neg.T
    if score == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-scores))
    np.fill_diagonal(scores, -np.inf)
    out = {}
    for r, item in enumerate(ids.tolist()):
        top = np.argpartition(-scores[r], k)[:k]
        top = top[np.argsort(-scores[r][top], kind="stable")]
        out[item] = (ids[top].tolist(), scores[r][top].astype(np.float64))
    return out


def main() -> None:
    tuned = tq.tuned_validation("quality_")
    val, cfg, knobs, i2v, knn, cf = (tuned.val, tuned.cfg, tuned.knobs, tuned.i2v, tuned.knn,
                                     tuned.cf)
    rows: list[tuple[str, str, dict]] = []

    def row(group: str, what: str, m: dict) -> None:
        rows.append((group, what, m))
        print(f"{group:28s} {what:50s} {tq.fmt(m)}", flush=True)

    window = knobs["coview_window_s"]
    for fwd, bwd, decay in [(1, 1, 1), (1, 0.5, 1), (1, 0.25, 1), (1, 0, 1), (1, 1, 0.7),
                            (1, 0.5, 0.5)]:
        recent, lists, degree = directional_coview(val, window, fwd, bwd, decay)
        with_coview(val, knobs, recent, lists)
        what = f"forward {fwd}, backward {bwd}, position decay {decay}"
        row("1 directional co-view", what + " (co-view alone)",
            tq.evaluate(val, tq.single(cfg, "coview"), knobs, knn, cf))
        row("1 directional co-view", what + " (blend)", tq.evaluate(val, cfg, knobs, knn, cf))

    recent, lists, degree = directional_coview(val, window, 1, 1, 1)
    for beta in (0.5, 0.75, 1.0):
        adjusted = {i: (ids, s / np.array([max(degree.get(p, 1.0), 1.0) ** beta for p in ids]))
                    for i, (ids, s) in lists.items()}
        with_coview(val, knobs, recent, adjusted)
        row("2 co-view / degree**beta", f"beta {beta} (co-view alone)",
            tq.evaluate(val, tq.single(cfg, "coview"), knobs, knn, cf))
        for w in (0.4, 0.8, 1.2):
            row("2 co-view / degree**beta", f"beta {beta}, w_coview {w} (blend)",
                tq.evaluate(val, replace(cfg, w_coview=w), knobs, knn, cf))
    with_coview(val, knobs, recent, lists)

    for change in ({}, {"window": 5}, {"window": 10, "ns_exponent": 0.5}):
        knn_u = tq.train_item2vec(val, replace(i2v, **change), 1e10)
        row("3 Item2Vec on user histories", f"{change or 'tuned parameters'} (alone)",
            tq.evaluate(val, tq.single(cfg, "embedding"), knobs, knn_u, cf))
        for w in (0.1, 0.3):
            row("3 Item2Vec on user histories", f"{change or 'tuned parameters'}, w_embed {w}",
                tq.evaluate(val, replace(cfg, w_embed=w), knobs, knn_u, cf))

    for score in ("dot", "sigmoid"):
        knn_io = in_out_lists(val, i2v, knobs["session_gap_s"], score)
        row("6 Item2Vec in . out", f"{score} (alone)",
            tq.evaluate(val, tq.single(cfg, "embedding"), knobs, knn_io, cf))
        for w in (0.1, 0.3, 0.6):
            row("6 Item2Vec in . out", f"{score}, w_embed {w}",
                tq.evaluate(val, replace(cfg, w_embed=w), knobs, knn_io, cf))

    row("4 EASE alone", "lambda 50 (all seen excluded)", ease_alone(val, 50.0))
    row("4 EASE alone", "lambda 200 (all seen excluded)", ease_alone(val, 200.0))
    row("reference", "ALS alone (served lists)", tq.evaluate(val, tq.single(cfg, "cf"), knobs,
                                                             knn, cf))
    row("reference", "served blend", tq.evaluate(val, cfg, knobs, knn, cf))
    for what, m in second_stage(val, cfg, knobs, knn, cf).items():
        row("5 learned second stage", what, m)

    lines = ["# Quality experiments on MovieLens-100k (validation split)", "",
             "Generated by `benchmarks/quality_experiments.py`; see its docstring for what each "
             "group changes. Gensim with 2 workers is not bit-reproducible: differences below "
             "about 0.005 in HR@10 are noise.", "", "| experiment | variant | HR@10 | NDCG@10 |",
             "|---|---|---:|---:|"]
    lines += [f"| {g} | {w} | {m['hr']:.4f} | {m['ndcg']:.4f} |" for g, w, m in rows]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
