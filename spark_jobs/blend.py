"""Offline evaluation of the full blend, scored by `reco.ranking.rank` (the API's own code).

Each evaluated user is ranked at the time t of their held-out event (the recency signal's "now")
with features rebuilt by the processor's pure functions (`reco.features`):
- recent and seen items: the user's own training events, which all precede the held-out event
  (the split holds out each user's last event in event order); the whole history, without the
  recent list's TTL (as the demo, which replays the history in minutes, serves them);
- co-view lists and forward-decayed popularity: as of t, from the training events of every
  user that precede the held-out event in event order (`reco.event_order`) within the last
  `replay_s` seconds before t (`spark_jobs.blend_replay`);
- the model's published lists (KNN, ALS, SASRec): NOT as of t. The models are trained on all
  the training events, other users' later ones included: the leave-last-out protocol
  (README, "Quality"), which the model-alone metrics and their popularity baseline
  (`EvalData.popularity`, summed over all the training events) follow too.
Other users' held-out events are in no feature, even those before t (the processor would have
applied them): they are not training events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from reco.event_order import newest_distinct, newest_seen
from spark_jobs import extract as ex
from spark_jobs.evaluate import EvalData, hit_curve, metrics
from spark_jobs.files import read_parquet


def lists_by_owner(owner_ids: np.ndarray, idx: np.ndarray, scores: np.ndarray,
                   targets: np.ndarray, limit: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each owner's (ids, scores) as the API reads a published list (-inf scores dropped)."""
    out = {}
    target_list = targets.tolist()
    for row, owner in enumerate(owner_ids.tolist()):
        ok = np.isfinite(scores[row][:limit])
        out[owner] = ([target_list[j] for j in idx[row][:limit][ok]], scores[row][:limit][ok])
    return out


def model_features(model: str, model_dir: Path, neighbours_n: int) -> dict:
    """The model's lists as the API reads them from Redis: knn, item_cf, user_cf, user_seq."""
    with np.load(model_dir / "model.npz") as data:
        a = {name: data[name] for name in data.files}
    items = a["item_ids"]
    if model == "item2vec":
        return {"knn": lists_by_owner(items, a["nbr_idx"], a["nbr_scores"], items, neighbours_n)}
    users = lists_by_owner(a["user_ids"], a["cand_idx"], a["cand_scores"], items,
                           a["cand_idx"].shape[1])
    if model == "sasrec":
        return {"user_seq": users}
    return {"item_cf": lists_by_owner(items, a["nbr_idx"], a["nbr_scores"], items, neighbours_n),
            "user_cf": users}


def user_histories(events: pd.DataFrame, users: set[str], recent_max: int, seen_max: int
                   ) -> tuple[dict[str, list[str]], dict[str, tuple[list[str], list[float]]]]:
    """(seen, recent) of each of `users`, as the processor keeps them: the `seen_max` newest
    distinct items (`newest_seen`), and the `recent_max` newest in event order with their
    times."""
    mine = events[events["user_id"].isin(users)]
    by_user = newest_distinct(mine).groupby("user_id", sort=False)
    distinct = by_user["item_id"].agg(list).to_dict()
    times = by_user["ts"].agg(list).to_dict()
    return (newest_seen(mine, seen_max),
            {u: (items[:recent_max], times[u][:recent_max]) for u, items in distinct.items()})


def rankings(data: EvalData, model: str, model_dir: Path, k: int, rank_config: dict,
             feature_params: dict, coview_max: int, max_users: int = 2000,
             replay_s: float = 7 * 86400.0, seed: int = 0
             ) -> Iterator[tuple[str, str, list[str]]]:
    """(user, held-out item, the user's top k) of up to `max_users` users, in the order of
    their held-out events.

    Each item's co-view list keeps its `coview_max` best partners, as the processor trims it
    (RECO_COVIEW_MAX): what is measured is what is served. Co-view and popularity replay the
    `replay_s` seconds before each user's held-out event (the co-view TTL: what the serving
    store would still hold; popularity, which Redis never expires, is cut there too, after
    2**(replay_s / half-life) of decay).
    """
    from reco.catalog import ItemIndex
    from reco.features import FeatureParams
    from reco.ranking import RankConfig, UserFeatures, rank
    from reco.rules import Filters
    from spark_jobs.blend_replay import AsOfFeatures

    config = RankConfig(**rank_config)
    params = FeatureParams(**feature_params)
    events = read_parquet(data.extract_dir / ex.TRAIN_EVENTS,
                          ["user_id", "item_id", "event_type", "ts", "event_id"])
    held = read_parquet(data.extract_dir / ex.HOLDOUT, ["user_id", "item_id", "ts", "event_id"])
    if len(held) > max_users:
        held = held.sample(n=max_users, random_state=seed)
    seen, recent = user_histories(events, set(held["user_id"]), params.recent_max,
                                  params.seen_max)
    held = held[held["user_id"].isin(recent)]  # no training event: nothing to rank from
    lists = model_features(model, model_dir, config.neighbours_n)
    as_of = AsOfFeatures(events, held["ts"].to_numpy(np.float64),
                         held["event_id"].astype(str).tolist(),
                         ItemIndex.build({item: {} for item in data.item_ids.tolist()}), params,
                         replay_s, coview_max)
    users, targets, held_ts = (held[c].tolist() for c in ("user_id", "item_id", "ts"))
    for n in as_of.order.tolist():
        index = as_of.at(n)
        user = users[n]
        items, times = recent[user]
        sources = items[: config.recent_n]
        features = UserFeatures(
            recent=items, recent_times=dict(zip(items, times, strict=True)),
            now=float(held_ts[n]), coview=as_of.coview(sources),
            knn={s: lists["knn"][s] for s in sources if s in lists.get("knn", {})},
            item_cf={s: lists["item_cf"][s] for s in sources if s in lists.get("item_cf", {})},
            user_cf=lists.get("user_cf", {}).get(user),
            user_seq=lists.get("user_seq", {}).get(user), seen=seen.get(user, ()))
        yield user, targets[n], [s.item_id for s in rank(features, index, config, Filters(),
                                                          k).items]


def evaluate(data: EvalData, model: str, model_dir: Path, k: int, rank_config: dict,
             feature_params: dict, coview_max: int, max_users: int = 2000,
             replay_s: float = 7 * 86400.0, seed: int = 0) -> dict:
    """Blend metrics (same keys as the model-alone ones) of the `rankings`."""
    ranks, tops = [], []
    for _, target, ranked in rankings(data, model, model_dir, k, rank_config, feature_params,
                                      coview_max, max_users, replay_s, seed):
        ranks.append(ranked.index(target) + 1 if target in ranked else np.inf)
        tops.append([data.items.get(i, -1) for i in ranked] + [-1] * (k - len(ranked)))
    rank_arr = np.asarray(ranks, dtype=float)
    top_arr = np.asarray(tops, dtype=np.int64).reshape(-1, k)
    result = metrics(rank_arr, top_arr, len(data.item_ids), k)
    return {"metrics": result, "curve": hit_curve(rank_arr, k), "weights": {
        n: rank_config[n] for n in ("w_coview", "w_embed", "w_pop", "w_recency", "w_cf",
                                    "w_seq")}}
