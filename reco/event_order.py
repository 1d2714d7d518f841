"""The one order of events in time: by timestamp, then by event id.

Events with one timestamp have no order of their own (MovieLens stamps a whole page of ratings
with one second: 76% of its events share their user's timestamp with another). Every place that
orders events breaks such ties the same way, by the event id: the evaluation split's held-out
event, the extract's (Spark) held-out event, sessions and SASRec's sequences, the evaluation's
recent items, the offline replays that rebuild the processor's features, and the files the data
commands write, which `reco replay` sends in file order. The id is unique, stable across re-reads
and re-imports (MovieLens' is a hash of user, item and time) and knows nothing about the item,
so no item is favoured by its id. pandas and Spark compare ids as text in the same order
(code points; UTF-8 bytes).

The stream processor applies a user's events in arrival order (their Kafka offsets): a replay of
a file or split written in this order reaches it in this order, so its recent list is the one
the batch side rebuilds. Live clients' ties (one user, one millisecond) reach it in the order
they were sent, which the batch side cannot know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column

TIE_COL = "event_id"


def sort_events(frame: pd.DataFrame, time_col: str, user_col: str | None = None,
                newest_first: bool = False, tie_col: str = TIE_COL) -> pd.DataFrame:
    """`frame` in event order (by user first, when `user_col` is given)."""
    keys = [time_col, tie_col]
    ascending = [not newest_first] * 2
    if user_col is not None:
        keys, ascending = [user_col, *keys], [True, *ascending]
    return frame.sort_values(keys, ascending=ascending, kind="stable")


def spark_order(time_col: str, newest_first: bool = False,
                tie_col: str = TIE_COL) -> list[Column]:
    """The same order as Spark sort columns (for `orderBy`, windows included)."""
    from pyspark.sql import functions as F

    cols = [F.col(time_col), F.col(tie_col)]
    return [c.desc() for c in cols] if newest_first else [c.asc() for c in cols]


def newest_distinct(frame: pd.DataFrame, n: int | None = None, user_col: str = "user_id",
                    item_col: str = "item_id", time_col: str = "ts",
                    tie_col: str = TIE_COL) -> pd.DataFrame:
    """Each user's distinct items, newest first by their last event, at most `n` per user: the
    recent list the processor keeps for a user whose events arrived in event order."""
    latest = sort_events(frame, time_col, newest_first=True, tie_col=tie_col).drop_duplicates(
        [user_col, item_col])
    if n is None:
        return latest
    return latest[latest.groupby(user_col, sort=False).cumcount() < n]


def newest_seen(frame: pd.DataFrame, n: int, user_col: str = "user_id",
                item_col: str = "item_id", time_col: str = "ts") -> dict[str, list[str]]:
    """Each user's seen items as the processor keeps them (`reco.keys.user_seen`): the `n`
    distinct items with the latest last touch in epoch ms (`time_col` in seconds), ties by item
    id descending, the order Redis gives equal scores. Not the event order: a sorted set keeps
    none."""
    ms = (frame[time_col] * 1000).round().astype("int64")
    last = frame.assign(_ms=ms).groupby([user_col, item_col], as_index=False)["_ms"].max()
    newest = last.sort_values([user_col, "_ms", item_col], ascending=[True, False, False])
    kept = newest[newest.groupby(user_col, sort=False).cumcount() < n]
    return kept.groupby(user_col, sort=False)[item_col].agg(list).to_dict()
