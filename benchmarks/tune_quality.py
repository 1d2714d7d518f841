"""Tune the served blend and the Item2Vec / ALS hyperparameters on MovieLens-100k VALIDATION.

Protocol (issue 6): temporal leave-last-out, full ranking over unseen items, k=10. Choosing is
done on the validation split only (each user's second-to-last item; features and models from
the user's other events, by `reco.evaluation_split`). The test split (each user's last item)
is scored ONCE at the end for the chosen configuration and is never used to choose anything.

The evaluation mirrors the live API path as closely as a single process can:
- models are trained with the pipeline's own functions (`spark_jobs.item2vec.fit`,
  `spark_jobs.als.fit`, engine local) on sessions / interactions built by the extract's own
  transforms (`spark_jobs.extract.sessions` / `interactions`, in a local SparkSession), and their
  lists are read as `spark_jobs.blend` reads them (`lists_by_owner`);
- real-time features are replayed through `reco.features.plan_batch` (the processor's code) over
  the whole known history in event order (`reco.event_order`: the order the demo's replay
  reaches the processor in): recent list (50), co-view, forward-decayed popularity;
- every user is ranked at one "now" (the last known event, as the API ranks every user at the
  shifted present), with `reco.ranking.rank`, catalogue categories and created_at (diversity and
  freshness rules), and "seen" = the newest `seen_max` (500) items the user touched
  (`UserFeatures.seen`, what the API reads from `user:seen_at` and excludes; every touched item
  from commit cfae411 until the bound); one validation row also shows the
  recent 50 alone excluded (the API before cfae411, not the API now);
- the served lists include item2vec KNN, ALS item neighbours and ALS user candidates together.

Run: .venv/bin/python benchmarks/tune_quality.py [--quick]   (Java 17 for the SparkSession)
Writes benchmarks/reports/tuning.md and tuning.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reco.catalog import ItemIndex  # noqa: E402
from reco.evaluation_split import hit_rate_at_k, leave_last_out, ndcg_at_k  # noqa: E402
from reco.event_order import TIE_COL, newest_seen, sort_events  # noqa: E402
from reco.features import FeatureParams, FeatureUpdates, plan_batch  # noqa: E402
from reco.ranking import RankConfig, UserFeatures, rank  # noqa: E402
from reco.rules import Filters  # noqa: E402
from reco.settings import Settings  # noqa: E402
from spark_jobs import als as als_job  # noqa: E402
from spark_jobs import extract as ex  # noqa: E402
from spark_jobs import item2vec as i2v_job  # noqa: E402
from spark_jobs.blend import lists_by_owner  # noqa: E402

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

K = 10
DATA_DIR = ROOT / ".reco" / "data" / "ml-100k"
REPORTS = ROOT / "benchmarks" / "reports"
_Event = namedtuple("_Event", "user_id item_id event_type timestamp_s")
_spark: SparkSession | None = None


# ---------------------------------------------------------------- data

def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    events_path, items_path = DATA_DIR / "events.parquet", DATA_DIR / "items.parquet"
    if not events_path.exists():
        from reco.data import movielens
        movielens.build(None, DATA_DIR, ROOT / ".reco" / "cache")
    return pd.read_parquet(events_path), pd.read_parquet(items_path)


def spark() -> SparkSession:
    """One small local SparkSession for the extract's transforms (started on first use)."""
    global _spark
    if _spark is None:
        from spark_jobs.session import build_session

        _spark = build_session("tune-quality", "local[2]", "1g", shuffle_partitions=2)
    return _spark


class Split:
    """Everything known at one prediction time (validation or test)."""

    def __init__(self, name: str, known: pd.DataFrame, model_train: pd.DataFrame,
                 targets: pd.DataFrame, items: pd.DataFrame, params: FeatureParams,
                 tmp: Path) -> None:
        self.name, self.known, self.model_train = name, known, model_train
        self.params, self.weights = params, dict(params.event_weights)
        self.tmp = tmp / name
        self.now = float(known["ts"].max())
        self.targets = dict(zip(targets["user_id"], targets["item_id"], strict=True))
        self.item_meta = {r.item_id: {"category": r.category, "price": r.price,
                                      "in_stock": True, "created_at": r.created_at / 1000.0}
                          for r in items.itertuples()}
        # What the API excludes: the newest `seen_max` items each user touched.
        self.seen_all = {u: set(items) for u, items in
                         newest_seen(known, params.seen_max).items()}
        self._coview: dict = {}
        self._recent = None
        self._popularity: dict[float, list[tuple[str, float]]] = {}
        self._model_events: DataFrame | None = None
        self._extracts: dict[tuple, Path] = {}
        self.ordered = sort_events(known, "ts")

    def replay(self, **changes) -> FeatureUpdates:
        """The known events, in time order, through the processor's `plan_batch` with these
        FeatureParams changes. The popularity landmark is `now`, not the served one: MovieLens
        dates from 1997, ~350 30-day half-lives before the served landmark, and shorter
        half-lives underflow to 0 there; only ratios between items reach the ranking (every
        score shares the factor 2**((now - landmark) / half_life)), and those are the same."""
        params = replace(self.params, landmark_s=self.now, **changes)
        columns = [self.ordered[c].tolist() for c in ("user_id", "item_id", "event_type", "ts")]
        return plan_batch((_Event(*row) for row in zip(*columns, strict=True)), {}, {}, params,
                          now_s=self.now)

    def features(self, coview_window_s: float, coview_max: int = 200):
        """(recent per user, co-view lists) replayed through the processor's plan_batch."""
        if coview_window_s not in self._coview:
            upd = self.replay(coview_window_s=float(coview_window_s))
            coview = {}
            for item, partners in upd.coview.items():
                top = sorted(partners.items(), key=lambda kv: -kv[1])[:coview_max]
                coview[item] = ([p for p, _ in top], np.asarray([s for _, s in top]))
            self._coview[coview_window_s] = coview
            if self._recent is None:
                self._recent = {u: (list(s.items), dict(s.times)) for u, s in upd.recent.items()}
        return self._recent, self._coview[coview_window_s]

    def index(self, pop_half_life_h: float) -> ItemIndex:
        """Catalogue + the processor's forward-decayed popularity at `now` (see `replay`)."""
        if pop_half_life_h not in self._popularity:
            upd = self.replay(half_life_s=pop_half_life_h * 3600.0)
            # By item id: equal scores keep one order in the popular fallback whatever the replay.
            self._popularity[pop_half_life_h] = sorted(upd.popularity.items())
        return ItemIndex.build(self.item_meta, self._popularity[pop_half_life_h])

    def model_events(self) -> DataFrame:
        """The models' training events as the extract holds them (weights by event type; the
        event id breaks timestamp ties in the sessions and interactions)."""
        if self._model_events is None:
            path = self.tmp / "model_events.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.model_train[["user_id", "item_id", "event_type", "ts", TIE_COL]].to_parquet(path)
            self._model_events = ex.with_weights(spark().read.parquet(str(path)),
                                                 self.weights).cache()
        return self._model_events

    def sessions(self, gap_s: float) -> Path:
        """The extract's sessions of the training events (`spark_jobs.extract.sessions`), in
        (user, time) order: gensim's result depends on the order of its sentences, and the
        extract's file order is whatever Spark's partitions give."""
        key = ("sessions", gap_s)
        if key not in self._extracts:
            out = self.tmp / f"sessions-{gap_s:g}"
            (ex.sessions(self.model_events(), gap_s).coalesce(1)
             .sortWithinPartitions("user_id", "session")
             .write.mode("overwrite").parquet(str(out)))
            self._extracts[key] = out
        return self._extracts[key]

    def interactions(self, half_life_days: float) -> Path:
        """The extract's interactions (`spark_jobs.extract.interactions`). Ages count from the
        last training event: the harness has no extract window, whose end the DAG uses."""
        key = ("interactions", half_life_days)
        if key not in self._extracts:
            out = self.tmp / f"interactions-{half_life_days:g}"
            now = float(self.model_train["ts"].max())
            (ex.interactions(self.model_events(), now, half_life_days * 86400.0)
             .write.mode("overwrite").parquet(str(out)))
            self._extracts[key] = out
        return self._extracts[key]


# ---------------------------------------------------------------- models

def all_lists(ids: np.ndarray, idx: np.ndarray, scores: np.ndarray, targets: np.ndarray):
    """Every owner's whole list as blend reads it: `rank` keeps the first `neighbours_n`, as
    the API's read does, so one set of lists serves every blend the search tries."""
    return lists_by_owner(ids, idx, scores, targets, idx.shape[1])


def train_item2vec(split: Split, params: i2v_job.Item2VecParams, gap_s: float):
    model = i2v_job.fit(split.sessions(gap_s), params, engine="local")
    return all_lists(model.item_ids, model.nbr_idx, model.nbr_scores, model.item_ids)


def train_als(split: Split, params: als_job.ALSParams, half_life_days: float):
    m = als_job.fit(split.interactions(half_life_days), params, engine="local")
    return {"item_cf": all_lists(m.item_ids, m.nbr_idx, m.nbr_scores, m.item_ids),
            "user_cf": all_lists(m.user_ids, m.cand_idx, m.cand_scores, m.item_ids)}


# ---------------------------------------------------------------- evaluation

def user_features(split: Split, cfg: RankConfig, knobs: dict, knn: dict, cf: dict,
                  exclude_all_seen: bool = True, seq: dict | None = None
                  ) -> dict[str, UserFeatures]:
    """What the API would read for each evaluated user at `split.now` (`seq`: SASRec's
    per-user lists, when there are any). `exclude_all_seen=False`: only the recent list is
    excluded (not the API, which excludes the newest `seen_max` items the user touched)."""
    recent, coview = split.features(knobs["coview_window_s"])
    use_cf = cfg.w_cf > 0
    out = {}
    for user in split.targets:
        items, times = recent.get(user, ([], {}))
        sources = items[: cfg.recent_n]
        out[user] = UserFeatures(
            recent=items, recent_times=times, now=split.now,
            seen=split.seen_all.get(user, set()) if exclude_all_seen else (),
            coview={s: coview[s] for s in sources if s in coview and cfg.w_coview > 0},
            knn={s: knn[s] for s in sources if s in knn and cfg.w_embed > 0},
            item_cf={s: cf["item_cf"][s] for s in sources if use_cf and s in cf["item_cf"]},
            user_cf=cf["user_cf"].get(user) if use_cf else None,
            user_seq=seq.get(user) if seq and cfg.w_seq > 0 else None)
    return out


def evaluate(split: Split, cfg: RankConfig, knobs: dict, knn: dict, cf: dict,
             exclude_all_seen: bool = True, seq: dict | None = None) -> dict:
    index = split.index(knobs["pop_half_life_h"])
    features = user_features(split, cfg, knobs, knn, cf, exclude_all_seen, seq)
    ranks = []
    for user, target in split.targets.items():
        ranked = [s.item_id for s in rank(features[user], index, cfg, Filters(), K).items]
        ranks.append(ranked.index(target) + 1 if target in ranked else np.inf)
    r = np.asarray(ranks)
    return {"hr": hit_rate_at_k(r, K), "ndcg": ndcg_at_k(r, K), "users": len(r)}


OLD_RANK = dict(w_coview=0.4, w_embed=0.3, w_pop=0.2, w_recency=0.1, w_cf=0.0, recent_n=10,
                neighbours_n=50, recency_half_life_s=6 * 3600.0, source_half_n=0.0,
                neighbour_agg="max")
OLD_KNOBS = dict(coview_window_s=1800.0, pop_half_life_h=24.0, session_gap_s=1800.0,
                 als_half_life_days=30.0)
OLD_I2V = dict(window=5, epochs=10, negative=5, ns_exponent=0.75, sample=1e-3, vector_size=128)
OLD_ALS = dict(factors=64, regularization=0.05, iterations=15, alpha=1.0)

SINGLE = {"coview": dict(w_coview=1.0), "embedding": dict(w_embed=1.0),
          "popularity": dict(w_pop=1.0), "recency": dict(w_recency=1.0), "cf": dict(w_cf=1.0)}


def single(cfg: RankConfig, name: str) -> RankConfig:
    zero = dict(w_coview=0.0, w_embed=0.0, w_pop=0.0, w_recency=0.0, w_cf=0.0, w_seq=0.0)
    return replace(cfg, **(zero | SINGLE[name]))


def fmt(m: dict) -> str:
    return f"HR@10 {m['hr']:.4f}  NDCG@10 {m['ndcg']:.4f}"


@dataclass
class TunedValidation:
    """The validation split with the served configuration and its models trained: where every
    quality experiment starts."""

    val: Split
    items: pd.DataFrame
    cfg: RankConfig
    knobs: dict
    i2v: i2v_job.Item2VecParams
    knn: dict
    cf: dict
    tmp: Path


def served_choice(settings: Settings) -> dict:
    """What the API and the DAGs serve (Settings and the *Params defaults), in tuning.json's
    `chosen` shape. A tuning run's choice is served only once copied there."""
    return {"rank": {}, "item2vec": asdict(i2v_job.Item2VecParams()),
            "als": asdict(als_job.ALSParams()),
            "knobs": {"coview_window_s": float(settings.coview_window_s),
                      "pop_half_life_h": settings.popularity_half_life_h,
                      "session_gap_s": float(settings.session_gap_s),
                      "als_half_life_days": settings.recency_half_life_days}}


def tuned_validation(prefix: str) -> TunedValidation:
    """The served configuration on the validation split (not tuning.json's latest choice,
    which may not be served: the experiments' "served" rows must be the served ones)."""
    settings = Settings()
    chosen = served_choice(settings)
    events, items = load()
    events = events.assign(ts=events["timestamp"] / 1000.0)
    split = leave_last_out(events)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    val = Split("validation", split.train, split.train, split.validation, items,
                FeatureParams.from_settings(settings), tmp)
    knobs = chosen["knobs"]
    i2v = i2v_job.Item2VecParams(**chosen["item2vec"])
    knn = train_item2vec(val, i2v, knobs["session_gap_s"])
    cf = train_als(val, als_job.ALSParams(**chosen["als"]), knobs["als_half_life_days"])
    cfg = replace(RankConfig.from_settings(settings), **chosen["rank"])
    return TunedValidation(val, items, cfg, knobs, i2v, knn, cf, tmp)


# ---------------------------------------------------------------- search

def random_search(kind: str, start: list[dict], space: dict, n: int, rng: random.Random,
                  trial, note) -> tuple[dict, object]:
    """`start` then random points of `space` up to `n` distinct ones; the candidate with the
    best NDCG@10 and what its `trial` built (`trial(c) -> (metrics, model lists)`)."""
    candidates = list(start)
    while len(candidates) < n:
        candidates.append({k: rng.choice(v) for k, v in space.items()})
    tried, best = set(), (-1.0, None, None)
    for c in candidates:
        key = tuple(sorted(c.items()))
        if key in tried:
            continue
        tried.add(key)
        m, built = trial(c)
        note(kind, c, m)
        if m["ndcg"] > best[0]:
            best = (m["ndcg"], c, built)
    return best[1], best[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models-from", type=Path, default=None,
                    help="a previous tuning.json: reuse its chosen Item2Vec/ALS parameters and"
                         " knobs and search only the blend")
    ap.add_argument("--models-on", choices=["known", "heldout"], default="known",
                    help="known: models fit on every event known at prediction time (the DAG"
                         " refits the served model on the whole window); heldout: on that minus"
                         " each user's last event (the DAG's evaluation model)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    started = time.time()
    settings = Settings()
    feature_params = FeatureParams.from_settings(settings)
    tmp = Path(tempfile.mkdtemp(prefix="tune_"))
    events, items = load()
    events = events.assign(ts=events["timestamp"] / 1000.0)
    split = leave_last_out(events)
    # Validation: known = train. Models fit on all of it (--models-on known, what the DAG
    # serves) or on it minus each user's last event (--models-on heldout, the DAG's own eval).
    from reco.evaluation_split import hold_out_last
    val_model_train = split.train
    if args.models_on == "heldout":
        _, val_model_train = hold_out_last(split.train, "user_id", "item_id", "ts")
    val = Split("validation", split.train, val_model_train, split.validation, items,
                feature_params, tmp)
    log = []

    def note(kind: str, params: dict, m: dict) -> None:
        log.append({"kind": kind, "params": params, **m})
        print(f"[{time.time() - started:6.0f}s] {kind:10s} {fmt(m)}  {params}", flush=True)

    knobs = {"coview_window_s": float(settings.coview_window_s),
             "pop_half_life_h": settings.popularity_half_life_h,
             "session_gap_s": float(settings.session_gap_s),
             "als_half_life_days": settings.recency_half_life_days}
    # The baseline row and the search start from the values before this tuning (defaults then).
    knobs |= OLD_KNOBS
    base_cfg = replace(RankConfig.from_settings(settings), **OLD_RANK)
    i2v = replace(i2v_job.Item2VecParams(), **OLD_I2V)
    alsp = replace(als_job.ALSParams(), **OLD_ALS)

    # ---- current defaults, for the record
    knn = train_item2vec(val, i2v, knobs["session_gap_s"])
    cf = train_als(val, alsp, knobs["als_half_life_days"])
    baseline = {"blend (old defaults)": evaluate(val, base_cfg, knobs, knn, cf)}
    for name in SINGLE:
        baseline[f"{name} alone (old)"] = evaluate(val, single(base_cfg, name), knobs, knn, cf)
    for n, m in baseline.items():
        note("baseline", {"what": n}, m)

    previous = json.loads(args.models_from.read_text())["chosen"] if args.models_from else None
    if previous:
        knobs = previous["knobs"]
        i2v = i2v_job.Item2VecParams(**previous["item2vec"])
        alsp = als_job.ALSParams(**previous["als"])
        knn = train_item2vec(val, i2v, knobs["session_gap_s"])
        cf = train_als(val, alsp, knobs["als_half_life_days"])

    if not previous:  # ---- popularity half-life (popularity alone)
        best_pop = (-1, None)
        for hl in [24.0, 72.0, 168.0, 720.0, 2160.0, 1e6]:
            m = evaluate(val, single(base_cfg, "popularity"), knobs | {"pop_half_life_h": hl},
                         knn, cf)
            note("pop_hl", {"pop_half_life_h": hl}, m)
            best_pop = max(best_pop, (m["ndcg"], hl))
        knobs["pop_half_life_h"] = best_pop[1]

        # ---- ALS (cf alone)
        als_space = {"factors": [32, 64, 128], "regularization": [0.5, 5.0, 20.0, 50.0],
                     "alpha": [0.5, 1.0, 5.0], "iterations": [15, 30],
                     "half_life_days": [120.0, 3650.0]}
        # the old defaults, then the best of a first coarse run (reg 0.01-5, alpha 1-20, hl 30d-10y)
        start = [dict(factors=64, regularization=0.05, alpha=1.0, iterations=15,
                      half_life_days=30.0),
                 dict(factors=64, regularization=5.0, alpha=1.0, iterations=30,
                      half_life_days=3650.0)]

        def als_trial(c: dict) -> tuple[dict, dict]:
            p = replace(alsp, **{k: v for k, v in c.items() if k != "half_life_days"})
            cf_c = train_als(val, p, c["half_life_days"])
            return evaluate(val, single(base_cfg, "cf"), knobs, knn, cf_c), cf_c

        als_best, cf = random_search("als", start, als_space, 6 if args.quick else 16, rng,
                                     als_trial, note)
        alsp = replace(alsp, **{k: v for k, v in als_best.items() if k != "half_life_days"})
        knobs["als_half_life_days"] = als_best["half_life_days"]

        # ---- Item2Vec (embedding alone)
        i2v_space = {"window": [3, 5, 10, 20], "epochs": [10, 30], "negative": [5, 10, 20],
                     "ns_exponent": [-0.5, 0.0, 0.5, 0.75, 1.0], "sample": [1e-3, 1e-4, 1e-5],
                     "session_gap_s": [1800.0, 3 * 3600.0, 86400.0]}
        start = [dict(window=5, epochs=10, negative=5, ns_exponent=0.75, sample=1e-3,
                      session_gap_s=1800.0)]

        def i2v_trial(c: dict) -> tuple[dict, dict]:
            p = replace(i2v, **{k: v for k, v in c.items() if k != "session_gap_s"})
            knn_c = train_item2vec(val, p, c["session_gap_s"])
            return evaluate(val, single(base_cfg, "embedding"), knobs, knn_c, cf), knn_c

        i2v_best, knn = random_search("item2vec", start, i2v_space, 6 if args.quick else 16, rng,
                                      i2v_trial, note)
        i2v = replace(i2v, **{k: v for k, v in i2v_best.items() if k != "session_gap_s"})
        knobs["session_gap_s"] = i2v_best["session_gap_s"]

        # ---- co-view window (coview alone)
        best_cv = (-1.0, None)
        for w in [1800.0, 3 * 3600.0, 86400.0]:
            m = evaluate(val, single(base_cfg, "coview"), knobs | {"coview_window_s": w}, knn, cf)
            note("coview_w", {"coview_window_s": w}, m)
            best_cv = max(best_cv, (m["ndcg"], w))
        knobs["coview_window_s"] = best_cv[1]

    # ---- blend: random search on weights + knobs, then coordinate refinement
    def blend_eval(c: dict) -> dict:
        fields = RankConfig.__dataclass_fields__
        cfg = replace(base_cfg, **{k: v for k, v in c.items() if k in fields})
        return evaluate(val, cfg, knobs, knn, cf)

    space = {"w_coview": [0.0, 0.1, 0.2, 0.4], "w_embed": [0.0, 0.1, 0.2, 0.3, 0.5],
             # w_pop > 0: popularity orders the fallback for users without features
             "w_pop": [0.01, 0.05, 0.1, 0.2, 0.4], "w_recency": [0.0, 0.05, 0.1, 0.2],
             "w_cf": [0.2, 0.4, 0.6, 1.0], "recent_n": [5, 10, 20, 50],
             "neighbours_n": [20, 50, 100], "recency_half_life_s": [3600.0, 6 * 3600.0,
                                                                    86400.0, 7 * 86400.0],
             "source_half_n": [0.0, 1.0, 2.0, 4.0, 8.0], "neighbour_agg": ["max", "sum"]}
    best = (previous["rank"] | {"neighbour_agg": previous["rank"].get("neighbour_agg", "max"),
                                "w_pop": max(previous["rank"]["w_pop"], 0.01)}
            if previous else
            dict(w_coview=0.4, w_embed=0.3, w_pop=0.2, w_recency=0.1, w_cf=0.4, recent_n=10,
                 neighbours_n=50, recency_half_life_s=6 * 3600.0, source_half_n=0.0,
                 neighbour_agg="max"))
    best_m = blend_eval(best)
    note("blend", best, best_m)
    n_rand = 10 if args.quick else 40
    for _ in range(n_rand):
        c = {k: rng.choice(v) for k, v in space.items()}
        m = blend_eval(c)
        note("blend", c, m)
        if m["ndcg"] > best_m["ndcg"]:
            best, best_m = c, m
    for _ in range(1 if args.quick else 2):  # coordinate passes
        for key, values in space.items():
            for v in values:
                if v == best[key]:
                    continue
                c = best | {key: v}
                m = blend_eval(c)
                note("coord", c, m)
                if m["ndcg"] > best_m["ndcg"]:
                    best, best_m = c, m

    chosen_cfg = replace(base_cfg, **best)
    val_table = {"blend (chosen)": best_m}
    for name in SINGLE:
        val_table[f"{name} alone"] = evaluate(val, replace(single(chosen_cfg, name),
                                                           recent_n=chosen_cfg.recent_n), knobs,
                                              knn, cf)
    val_table["blend, recent 50 only excluded (not the API)"] = evaluate(
        val, chosen_cfg, knobs, knn, cf, exclude_all_seen=False)
    val_table["blend (old defaults)"] = baseline["blend (old defaults)"]

    # ---- TEST: once, for the chosen configuration (not used for choosing)
    # Live: features from the whole replayed history; models on all of it (known) or on it
    # minus each user's last event (heldout); targets = each user's last event.
    test = Split("test", split.history,
                 split.history if args.models_on == "known" else split.train,
                 split.test, items, feature_params, tmp)
    knn_t = train_item2vec(test, i2v, knobs["session_gap_s"])
    cf_t = train_als(test, alsp, knobs["als_half_life_days"])
    test_table = {"blend (chosen)": evaluate(test, chosen_cfg, knobs, knn_t, cf_t),
                  "popularity alone": evaluate(test, single(chosen_cfg, "popularity"), knobs,
                                               knn_t, cf_t)}
    for n, m in test_table.items():
        note("TEST", {"what": n}, m)

    result = {
        "protocol": "temporal leave-last-out (split since commit fa46896, event order of"
                    " reco/event_order.py), full ranking over unseen items (every item the user"
                    " touched excluded, as the API does), k=10, MovieLens-100k; chosen on"
                    " validation",
        "models_on": args.models_on,
        "chosen": {"rank": {k: getattr(chosen_cfg, k) for k in best},
                   "knobs": knobs, "item2vec": asdict(i2v), "als": asdict(alsp)},
        "validation": val_table, "test_once": test_table, "search_log": log,
        "elapsed_s": time.time() - started,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "tuning.json").write_text(json.dumps(result, indent=2, default=float))
    lines = ["# Quality tuning on MovieLens-100k (validation split)", "",
             f"Protocol: {result['protocol']}. Script: `benchmarks/tune_quality.py`"
             f" ({len(log)} evaluations, {result['elapsed_s']:.0f}s).", "",
             "## Chosen defaults", "", "```json", json.dumps(result["chosen"], indent=2), "```",
             "", "## Validation (used for choosing)", "", "| configuration | HR@10 | NDCG@10 |",
             "|---|---|---|"]
    lines += [f"| {n} | {m['hr']:.4f} | {m['ndcg']:.4f} |" for n, m in val_table.items()]
    lines += ["", "## Test (measured once for the chosen configuration; not used for choosing)",
              "", "| configuration | HR@10 | NDCG@10 |", "|---|---|---|"]
    lines += [f"| {n} | {m['hr']:.4f} | {m['ndcg']:.4f} |" for n, m in test_table.items()]
    (REPORTS / "tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
