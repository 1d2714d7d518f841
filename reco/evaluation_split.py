"""Temporal leave-last-out splits and ranking metrics for offline and through-the-API evaluation.

The protocol matches `spark_jobs.extract.split_leave_last_out`, so numbers measured through the
API and by the batch evaluation are comparable:
- each user's events are in the project's one event order, (timestamp, event_id)
  (`reco.event_order`); the last one is the test interaction. Events with one timestamp have
  no order of their own; the event id (a UUID, a hash for MovieLens) orders them
  deterministically and knows nothing about the item. The item id would hold out MovieLens
  items whose ids sort last, which are less popular than their pages (on the 415 users whose
  last page is tied: 139 ratings on average for the item-id choice, 156 for the event-id one,
  165 for the pages' items on average);
- the history usable to predict it is every other event of the user except those on the
  held-out item, so that item is one the user has not been seen with (full ranking excludes
  seen items). Events that share the held-out one's timestamp stay in the history: they are
  not later than it, and MovieLens stamps a whole page of ratings with one second, so
  dropping them would withhold the user's last page (44% of MovieLens-100k users) rather
  than only the one interaction held out;
- validation applies the same rule to the history (its last event), train is the rest of it;
- users with no usable history are not evaluated and keep all their events in train/history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reco.event_order import TIE_COL, sort_events


@dataclass(frozen=True)
class LeaveLastOut:
    train: pd.DataFrame  # history minus validation: fit and tune on this
    validation: pd.DataFrame  # one row per tunable user: their last history event
    test: pd.DataFrame  # one row per evaluated user: their last event
    history: pd.DataFrame  # what may be known when predicting test (replay this for the test run)


def hold_out_last(
    events: pd.DataFrame, user_col: str, item_col: str, time_col: str, tie_col: str = TIE_COL
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held, rest): each user's last event by (time, tie), and the events allowed as its
    history."""
    ordered = sort_events(events, time_col, user_col=user_col, tie_col=tie_col)
    last = ~ordered[user_col].duplicated(keep="last")
    held = ordered[last]
    held_item = ordered[user_col].map(held.set_index(user_col)[item_col])
    usable = ordered[item_col] != held_item
    evaluable = ordered.loc[usable, user_col].unique()
    held = held[held[user_col].isin(evaluable)]
    # Users that cannot be evaluated keep everything as history.
    keep = usable | ~ordered[user_col].isin(evaluable)
    return held, ordered[keep]


def leave_last_out(
    events: pd.DataFrame, user_col: str = "user_id", item_col: str = "item_id",
    time_col: str = "timestamp", tie_col: str = TIE_COL,
) -> LeaveLastOut:
    """Split events into train / validation / test (+ the test-time history), per user by time."""
    test, history = hold_out_last(events, user_col, item_col, time_col, tie_col)
    validation, train = hold_out_last(history, user_col, item_col, time_col, tie_col)
    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        # The demo replays the history in this order: the stream processor sees each user's
        # events in the event order the batch jobs use too.
        return sort_events(frame, time_col, tie_col=tie_col).reset_index(drop=True)
    return LeaveLastOut(tidy(train), tidy(validation), tidy(test), tidy(history))


def ranks_of(ranked: Mapping[str, Sequence[str]], targets: Mapping[str, str]) -> np.ndarray:
    """1-based rank of each user's target in their ranked list (inf when absent or no list)."""
    out = np.full(len(targets), np.inf)
    for n, (user, target) in enumerate(targets.items()):
        items = list(ranked.get(user, ()))
        if target in items:
            out[n] = items.index(target) + 1
    return out


def hit_rate_at_k(rank: np.ndarray, k: int) -> float:
    return float((rank <= k).mean()) if len(rank) else 0.0


def ndcg_at_k(rank: np.ndarray, k: int) -> float:
    """One relevant item per user, so the ideal DCG is 1 and NDCG = 1/log2(rank + 1)."""
    return float(np.where(rank <= k, 1.0 / np.log2(rank + 1), 0.0).mean()) if len(rank) else 0.0


def mrr_at_k(rank: np.ndarray, k: int) -> float:
    return float(np.where(rank <= k, 1.0 / rank, 0.0).mean()) if len(rank) else 0.0


def score_rankings(
    ranked: Mapping[str, Sequence[str]], targets: Mapping[str, str], k: int = 10
) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k of served lists against held-out items (missing list = miss)."""
    rank = ranks_of({u: list(items)[:k] for u, items in ranked.items()}, targets)
    return {f"hr_at_{k}": hit_rate_at_k(rank, k), f"ndcg_at_{k}": ndcg_at_k(rank, k),
            f"mrr_at_{k}": mrr_at_k(rank, k), "users": int(len(rank))}


def targets_of(held: pd.DataFrame, user_col: str = "user_id", item_col: str = "item_id"
               ) -> dict[str, str]:
    """{user: held-out item} from a validation or test frame."""
    return dict(zip(held[user_col].astype(str), held[item_col].astype(str), strict=True))


SPLIT_FILES = ("train", "validation", "test", "history")


def split_file(events_path: Path, out_dir: Path) -> dict[str, Path]:
    """Split an events Parquet file into train/validation/test/history Parquet files."""
    import pyarrow as pa

    from reco.data.schema import EVENTS_SCHEMA, open_parquet, require_columns, write_table

    file = open_parquet(events_path)
    require_columns(file.schema_arrow, EVENTS_SCHEMA.names, str(events_path),
                    f"the split needs {', '.join(EVENTS_SCHEMA.names)}")
    split = leave_last_out(file.read().to_pandas())
    return {
        name: write_table(pa.Table.from_pandas(getattr(split, name), preserve_index=False),
                          out_dir / f"{name}.parquet", EVENTS_SCHEMA)
        for name in SPLIT_FILES
    }
