"""Offline evaluation of the full blend, scored by `reco.ranking.rank` (the API's own code).

Features are rebuilt from the training events with the processor's pure functions
(`reco.features.plan_batch`): each user's recent items and times, co-view lists and
forward-decayed popularity; the model contributes its published lists. Each evaluated user is
ranked at the time of their held-out event, exactly as the API would rank them. Events are
replayed in event order (`reco.event_order`), the order the processor saw them in.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd

from reco.event_order import newest_distinct, newest_seen, sort_events
from spark_jobs import extract as ex
from spark_jobs.evaluate import EvalData, hit_curve, metrics
from spark_jobs.files import read_parquet

_Event = namedtuple("_Event", "user_id item_id event_type timestamp_s")


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


def evaluate(data: EvalData, model: str, model_dir: Path, k: int, rank_config: dict,
             feature_params: dict, coview_max: int, max_users: int = 2000,
             replay_s: float = 7 * 86400.0, seed: int = 0) -> dict:
    """Blend metrics (same keys as the model-alone ones) on up to `max_users` users.

    Each item's co-view list keeps its `coview_max` best partners, as the processor trims it
    (RECO_COVIEW_MAX): what is measured is what is served.

    Co-view and popularity replay only the window's last `replay_s` seconds (the co-view TTL:
    what the serving store would still hold); recent items come from the whole history.
    """
    from reco.catalog import ItemIndex
    from reco.features import FeatureParams, plan_batch
    from reco.ranking import RankConfig, UserFeatures, rank
    from reco.rules import Filters

    config = RankConfig(**rank_config)
    params = FeatureParams(**feature_params)
    events = read_parquet(data.extract_dir / ex.TRAIN_EVENTS,
                          ["user_id", "item_id", "event_type", "ts", "event_id"])
    last_ts = float(events["ts"].max()) if len(events) else 0.0
    replay = sort_events(events[events["ts"] >= last_ts - replay_s], "ts")
    # Plain Python columns: iterating Arrow-backed pandas rows costs more than the replay.
    columns = [replay[c].tolist() for c in ("user_id", "item_id", "event_type", "ts")]
    updates = plan_batch((_Event(*row) for row in zip(*columns, strict=True)), {}, {}, params,
                         now_s=last_ts)
    coview = {}
    for item, partners in updates.coview.items():
        top = sorted(partners.items(), key=lambda kv: -kv[1])[:coview_max]
        coview[item] = ([p for p, _ in top], np.asarray([s for _, s in top]))
    index = ItemIndex.build({item: {} for item in data.item_ids.tolist()},
                            updates.popularity.items())
    lists = model_features(model, model_dir, config.neighbours_n)

    held = read_parquet(data.extract_dir / ex.HOLDOUT, ["user_id", "item_id", "ts"])
    if len(held) > max_users:
        held = held.sample(n=max_users, random_state=seed)
    seen, recent = user_histories(events, set(held["user_id"]), params.recent_max,
                                  params.seen_max)
    ranks, tops = [], []
    for user, target, t in zip(*(held[c].tolist() for c in ("user_id", "item_id", "ts")),
                               strict=True):
        if user not in recent:
            continue
        items, times = recent[user]
        sources = items[: config.recent_n]
        features = UserFeatures(
            recent=items, recent_times=dict(zip(items, times, strict=True)), now=float(t),
            coview={s: coview[s] for s in sources if s in coview},
            knn={s: lists["knn"][s] for s in sources if s in lists.get("knn", {})},
            item_cf={s: lists["item_cf"][s] for s in sources if s in lists.get("item_cf", {})},
            user_cf=lists.get("user_cf", {}).get(user),
            user_seq=lists.get("user_seq", {}).get(user), seen=seen.get(user, ()))
        ranked = [s.item_id for s in rank(features, index, config, Filters(), k).items]
        ranks.append(ranked.index(target) + 1 if target in ranked else np.inf)
        tops.append([index.row.get(i, -1) for i in ranked] + [-1] * (k - len(ranked)))
    rank_arr = np.asarray(ranks, dtype=float)
    top_arr = np.asarray(tops, dtype=np.int64).reshape(-1, k)
    result = metrics(rank_arr, top_arr, len(data.item_ids), k)
    return {"metrics": result, "curve": hit_curve(rank_arr, k), "weights": {
        n: rank_config[n] for n in ("w_coview", "w_embed", "w_pop", "w_recency", "w_cf",
                                    "w_seq")}}
