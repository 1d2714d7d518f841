"""Extract: events of a time window over JDBC -> interactions, sessions and a held-out set.

Transforms are pure DataFrame -> DataFrame functions with column names as keyword arguments;
`extract` is the only function that reads or writes. Events are ordered in time by
`reco.event_order` (timestamp, then event id) everywhere, as the evaluation split orders them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from reco.event_order import TIE_COL, spark_order

# File names inside an extract folder (read by training and evaluation).
TRAIN_EVENTS = "train_events.parquet"
HOLDOUT = "holdout.parquet"
INTERACTIONS = "interactions.parquet"
SESSIONS = "sessions.parquet"
# The same two datasets from every event of the window, held-out ones included: the model that
# is published is refit on these, so it knows each user's latest interactions.
INTERACTIONS_FULL = "interactions_full.parquet"
SESSIONS_FULL = "sessions_full.parquet"
MANIFEST = "extract.json"


@dataclass(frozen=True)
class JdbcSource:
    url: str
    user: str
    password: str
    partitions: int = 4
    fetch_size: int = 10_000


def read_events(spark: SparkSession, source: JdbcSource, start: datetime,
                end: datetime) -> DataFrame:
    """Events with start <= event_time < end, read in `partitions` parallel time ranges."""
    table = (
        "(SELECT event_id::text AS event_id, user_id, item_id, event_type, event_time FROM events"
        f" WHERE event_time >= '{start.isoformat()}' AND event_time < '{end.isoformat()}') AS e"
    )
    raw = (
        spark.read.format("jdbc")
        .option("url", source.url)
        .option("user", source.user)
        .option("password", source.password)
        .option("driver", "org.postgresql.Driver")
        .option("dbtable", table)
        .option("partitionColumn", "event_time")
        .option("lowerBound", start.strftime("%Y-%m-%d %H:%M:%S"))
        .option("upperBound", end.strftime("%Y-%m-%d %H:%M:%S"))
        .option("numPartitions", source.partitions)
        .option("fetchsize", source.fetch_size)
        .load()
    )
    return raw.select("event_id", "user_id", "item_id", "event_type",
                      F.col("event_time").cast("double").alias("ts"))


def with_weights(events: DataFrame, weights: dict[str, float], type_col: str = "event_type",
                 weight_col: str = "weight") -> DataFrame:
    """Add the configured weight of each event type (unknown types weigh 0)."""
    mapping = F.create_map(*[F.lit(x) for kv in weights.items() for x in kv])
    return events.withColumn(weight_col, F.coalesce(mapping[F.col(type_col)], F.lit(0.0)))


def split_leave_last_out(events: DataFrame, user_col: str = "user_id", item_col: str = "item_id",
                         ts_col: str = "ts", tie_col: str = TIE_COL
                         ) -> tuple[DataFrame, DataFrame]:
    """Hold out each user's last interaction (ties on the time: the larger event id); train
    on the user's other events, the protocol of `reco.evaluation_split`.

    Events on the held-out item are dropped from that user's history too, so the held-out
    item is one the user has not seen in training (full ranking excludes seen items). Events
    sharing its time stay. Users with no other history are not evaluated and keep all their
    events for training. The held-out rows keep their event id: the blend evaluation places
    them among the training events in event order.
    """
    last = Window.partitionBy(user_col).orderBy(
        *spark_order(ts_col, newest_first=True, tie_col=tie_col))
    ranked = events.withColumn("_rn", F.row_number().over(last))
    holdout = ranked.where("_rn = 1").select(
        user_col, F.col(item_col).alias("_held"), F.col(ts_col).alias("_held_ts"),
        F.col(tie_col).alias("_held_tie"))
    history = (
        events.join(holdout, user_col)
        .where(F.col(item_col) != F.col("_held"))
        .drop("_held", "_held_ts", "_held_tie")
    )
    evaluable = history.select(user_col).distinct()
    held = holdout.join(evaluable, user_col).select(
        user_col, F.col("_held").alias(item_col), F.col("_held_ts").alias(ts_col),
        F.col("_held_tie").alias(tie_col))
    # Users that cannot be evaluated keep all their events for training.
    train = history.unionByName(events.join(evaluable, user_col, "left_anti"))
    return train, held


def recency_factor(ts: Column, now_s: float, half_life_s: float) -> Column:
    return F.pow(F.lit(0.5), (F.lit(now_s) - ts) / F.lit(half_life_s))


def interactions(events: DataFrame, now_s: float, half_life_s: float,
                 user_col: str = "user_id", item_col: str = "item_id", ts_col: str = "ts",
                 weight_col: str = "weight", tie_col: str = TIE_COL) -> DataFrame:
    """Confidence per (user, item): sum of event weights decayed by age (half-life); and the
    user's last event on the item (`last_ts`, `last_event_id`), which orders SASRec's
    sequences in event order."""
    # The struct's max is the last event in event order: (time, tie) compared field by field.
    return events.groupBy(user_col, item_col).agg(
        F.sum(F.col(weight_col) * recency_factor(F.col(ts_col), now_s, half_life_s))
        .alias("confidence"),
        F.max(F.struct(F.col(ts_col).alias("t"), F.col(tie_col).alias("tie"))).alias("_last"),
    ).select(user_col, item_col, "confidence", F.col("_last.t").alias("last_ts"),
             F.col("_last.tie").alias("last_event_id"))


def sessions(events: DataFrame, gap_s: float, min_length: int = 2, user_col: str = "user_id",
             item_col: str = "item_id", ts_col: str = "ts", tie_col: str = TIE_COL
             ) -> DataFrame:
    """Item sequences in event order, split on inactivity > gap_s; consecutive repeats of an
    item collapse."""
    by_time = Window.partitionBy(user_col).orderBy(*spark_order(ts_col, tie_col=tie_col))
    # One window pass: a session is a contiguous run of the user's time order, so the previous
    # event inside the session is the user's previous event unless this one starts a session.
    marked = (
        events.select(user_col, item_col, ts_col, tie_col)
        .withColumn("_prev_ts", F.lag(ts_col).over(by_time))
        .withColumn("_prev_item", F.lag(item_col).over(by_time))
        .withColumn("_new", F.when(F.col("_prev_ts").isNull()
                                   | (F.col(ts_col) - F.col("_prev_ts") > gap_s), 1).otherwise(0))
        .withColumn("session", F.sum("_new").over(
            by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    )
    deduped = marked.where((F.col("_new") == 1) | (F.col("_prev_item") != F.col(item_col)))
    grouped = deduped.groupBy(user_col, "session").agg(
        F.sort_array(F.collect_list(F.struct(ts_col, tie_col, item_col))).alias("_seq"),
        F.min(ts_col).alias("start_ts"),
    )
    return (
        grouped.withColumn("items", F.transform("_seq", lambda x: x[item_col]))
        .where(F.size("items") >= min_length)
        .select(user_col, "session", "start_ts", "items")
    )


def parquet_rows(path: Path) -> int:
    """Row count of a written Parquet folder, from its footers (no Spark job)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").count_rows()


# Every dataset an extract can write; a model's training reads only some of them.
DATASETS = (TRAIN_EVENTS, HOLDOUT, INTERACTIONS, SESSIONS, INTERACTIONS_FULL, SESSIONS_FULL)


def extract(spark: SparkSession, source: JdbcSource, start: datetime, end: datetime,
            weights: dict[str, float], session_gap_s: float, half_life_days: float,
            out_dir: Path, datasets: tuple[str, ...] = DATASETS,
            read_at: datetime | None = None) -> dict:
    """Read the window, write the Parquet `datasets` (all by default) and a manifest.

    The manifest's `timings` hold seconds per Spark action (`read_s` is the JDBC read into
    the cache; each dataset's write follows).
    """
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown extract datasets: {sorted(unknown)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Before the read (PostgreSQL's clock, given by the caller): a user erased after this may
    # still be in what it reads (spark_jobs/erased_users.py).
    read_at = read_at or datetime.now(UTC)
    parts = max(1, source.partitions)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # One shuffle by user, then cached: the split, the sessions and the interactions are all
    # per user, so every later window, join and aggregation reuses this partitioning instead of
    # shuffling the events again (checked in the physical plans: no further exchange by user).
    events = (with_weights(read_events(spark, source, start, end), weights)
              .repartition(parts, "user_id").cache())
    # The first action fills the cache and counts in the same pass.
    counts = events.agg(F.count("*").alias("events"), F.countDistinct("user_id").alias("users"),
                        F.countDistinct("item_id").alias("items")).first()
    timings["read_s"] = time.perf_counter() - started
    train, held = split_leave_last_out(events)
    train = train.cache()
    now_s, half_life_s = end.timestamp(), half_life_days * 86400.0
    builders = {
        TRAIN_EVENTS: lambda: train,
        HOLDOUT: lambda: held.coalesce(1),
        INTERACTIONS: lambda: interactions(train, now_s, half_life_s),
        SESSIONS: lambda: sessions(train, session_gap_s),
        INTERACTIONS_FULL: lambda: interactions(events, now_s, half_life_s),
        SESSIONS_FULL: lambda: sessions(events, session_gap_s),
    }
    for name in DATASETS:
        if name in datasets:
            started = time.perf_counter()
            builders[name]().write.mode("overwrite").parquet(str(out_dir / name))
            timings[name.split(".")[0] + "_s"] = time.perf_counter() - started
    manifest = {
        "window_start": start.astimezone(UTC).isoformat(),
        "window_end": end.astimezone(UTC).isoformat(),
        "read_at": read_at.isoformat(),
        "events": int(counts["events"]), "users": int(counts["users"]),
        "items": int(counts["items"]),
        "train_events": parquet_rows(out_dir / TRAIN_EVENTS) if TRAIN_EVENTS in datasets
        else train.count(),
        "holdout_users": parquet_rows(out_dir / HOLDOUT) if HOLDOUT in datasets
        else held.count(),
        "datasets": [name for name in DATASETS if name in datasets],
        "session_gap_s": session_gap_s, "half_life_days": half_life_days, "weights": weights,
        "source": {k: v for k, v in asdict(source).items() if k != "password"},
        "dir": str(out_dir), "timings": timings,
    }
    if SESSIONS in datasets:
        manifest["sessions"] = parquet_rows(out_dir / SESSIONS)
    events.unpersist()
    train.unpersist()
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
