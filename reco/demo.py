"""The main job (`make demo`): MovieLens-100k through the whole platform, measured at the API.

Steps: start the stack, load the data, hold out each user's last interaction, replay the rest
through the ingest API, wait for the consumers, train through the Airflow DAGs, then ask the
recommendation API for every user and score the answers against the held-out items.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import Console

from reco.airflow_client import AirflowClient
from reco.data import movielens
from reco.data.schema import EVENTS_FILE, ITEMS_FILE
from reco.evaluation_split import LeaveLastOut, leave_last_out, score_rankings, targets_of
from reco.lag import wait_for_zero_lag
from reco.ranking import RankConfig
from reco.replay import ReplayOptions, replay_table
from reco.settings import Settings
from reco.stack import local
from spark_jobs import ENGINES, SPARK_MODELS

DAGS = {"item2vec_daily": "item2vec", "als_weekly": "als", "sasrec_daily": "sasrec"}  # -> model


@dataclass(frozen=True)
class DemoOptions:
    max_users: int | None = None  # a slice of the users, for quick runs and the test suite
    engine: str = "local"
    k: int = 10
    concurrency: int = 8
    dag_timeout_s: float = 900.0
    lag_timeout_s: float = 300.0
    start_stack: bool = True

    def __post_init__(self) -> None:
        # Checked here, not when the DAGs run: that is after the stack started and the replay.
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")


@dataclass
class DemoReport:
    users: int
    events_replayed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> HR/NDCG/...
    latency_ms: dict[str, float] = field(default_factory=dict)
    strategies: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    dag_runs: dict[str, str] = field(default_factory=dict)


class Steps:
    """Prints what the demo is doing and how long each step took."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{title}")
        started = time.monotonic()
        yield
        self.timings[title] = time.monotonic() - started
        self.console.print(f"[green]done[/] in {self.timings[title]:.1f}s")


def load_movielens(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = settings.state_dir / "data" / "ml-100k"
    if not (out / EVENTS_FILE).exists():
        movielens.build(None, out, settings.state_dir / "downloads")
    return pd.read_parquet(out / EVENTS_FILE), pd.read_parquet(out / ITEMS_FILE)


def slice_users(events: pd.DataFrame, max_users: int | None) -> pd.DataFrame:
    """The first `max_users` users by id (deterministic), or everyone."""
    if max_users is None:
        return events
    users = sorted(events["user_id"].unique(), key=lambda u: (len(u), u))[:max_users]
    return events[events["user_id"].isin(users)]


def known_catalogue(items: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """The items the replayed history mentions, each arriving with its first event there: the
    catalogue dates an item by its first rating, which may be a held-out one."""
    first = history.groupby("item_id")["timestamp"].min()
    known = items[items["item_id"].isin(first.index)]
    return known.assign(created_at=known["item_id"].map(first).astype(np.int64))


def status_printer(console: Console, prefix: str) -> Callable[[object], None]:
    """A poll callback printing `prefix + value` when the value changes; it rewrites one line
    on a terminal and appends lines in logs (no carriage returns there)."""
    last: list[object] = [object()]

    def show(value: object) -> None:
        if value != last[0]:
            last[0] = value
            console.print(f"{prefix}{value}", end="\r" if console.is_terminal else "\n")

    return show


def train_through_airflow(settings: Settings, opts: DemoOptions, console: Console,
                          window_days: int) -> dict[str, str]:
    """Trigger each DAG through Airflow's REST API and wait for it; returns run states."""
    client = AirflowClient(f"http://127.0.0.1:{settings.airflow_port}")
    client.wait_for_dags(list(DAGS))
    states = {}
    for dag_id, model in DAGS.items():
        # The DAGs start unpaused, but a stack whose Airflow stored them paused (an earlier
        # release) keeps them paused: a paused DAG's triggered runs never start.
        client.unpause(dag_id)
        # A model without a Spark engine trains locally whatever --engine says.
        engine = opts.engine if model in SPARK_MODELS else "local"
        # promote "gate": the demo trains the models it serves; with "auto", its own window
        # and engine would make each run an experiment, registered but never served.
        run_id = client.trigger(dag_id, {"engine": engine, "window_days": window_days,
                                         "promote": "gate"})
        console.print(f"triggered {dag_id} run {run_id}")
        state = client.wait(dag_id, run_id, opts.dag_timeout_s,
                            on_poll=status_printer(console, f"  {dag_id}: "))
        states[dag_id] = state
        if state != "success":
            failed = client.failed_tasks(dag_id, run_id)
            raise RuntimeError(f"{dag_id} run {run_id} {state} (failed tasks: {failed}); "
                               f"see the Airflow UI at http://127.0.0.1:{settings.airflow_port}")
        console.print(f"{dag_id}: {state}")
    return states


async def _fetch_all(base_url: str, paths: list[str], concurrency: int
                     ) -> list[tuple[dict[str, Any], float]]:
    """GET every path with bounded concurrency; returns (body, latency ms) in order."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        async def one(path: str) -> tuple[dict[str, Any], float]:
            async with semaphore:
                started = time.perf_counter()
                response = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                return response.raise_for_status().json(), elapsed

        return await asyncio.gather(*(one(p) for p in paths))


def served_recommendations(settings: Settings, users: list[str], k: int, concurrency: int
                           ) -> tuple[dict[str, list[str]], np.ndarray, dict[str, int]]:
    """Ask the API for every user: (user -> item ids, latencies ms, strategy counts)."""
    base = f"http://127.0.0.1:{settings.reco_port}"
    paths = [f"/recommendations?user_id={u}&k={k}" for u in users]
    answers = asyncio.run(_fetch_all(base, paths, concurrency))
    ranked = {u: [i["item_id"] for i in body["items"]]
              for u, (body, _) in zip(users, answers, strict=True)}
    strategies = Counter(body["strategy"] for body, _ in answers)
    return ranked, np.array([ms for _, ms in answers]), dict(strategies)


def popularity_baseline(settings: Settings, history: pd.DataFrame, users: list[str], k: int
                        ) -> dict[str, list[str]]:
    """The API's /popular list with each user's seen items removed (full ranking over unseen)."""
    base = f"http://127.0.0.1:{settings.reco_port}"
    body = httpx.get(f"{base}/popular", params={"k": 100}, timeout=10).raise_for_status().json()
    popular = [i["item_id"] for i in body["items"]]
    seen = history.groupby("user_id")["item_id"].agg(set).to_dict()
    return {u: [i for i in popular if i not in seen.get(u, set())][:k] for u in users}


SIGNAL_WEIGHTS = {"co-view": "w_coview", "embedding": "w_embed", "popularity": "w_pop",
                  "recency": "w_recency", "ALS": "w_cf", "SASRec": "w_seq"}


def single_signal_rankings(settings: Settings, users: list[str], k: int
                           ) -> dict[str, dict[str, list[str]]]:
    """Each signal alone, ranked by the API's own service code over the live Redis features
    (in process, bypassing the response cache): what each signal would serve by itself."""
    from serving.reco_service import RecoParams, RecoService
    from serving.reco_snapshots import GlobalSignals
    from serving.reco_store import FeatureStore

    # w_cf, w_seq > 0 make the service read the ALS item lists and the SASRec lists too.
    reader_settings = settings.model_copy(update={"w_cf": max(settings.w_cf, 1.0),
                                                  "w_seq": max(settings.w_seq, 1.0)})
    store = FeatureStore.from_settings(settings, timeout_s=5.0)
    signals = GlobalSignals(reader_settings)
    signals.refresh()
    service = RecoService(reader_settings, store, signals)
    base = RankConfig.from_settings(settings)
    zero = dict.fromkeys(SIGNAL_WEIGHTS.values(), 0.0)
    out = {}
    for name, weight in SIGNAL_WEIGHTS.items():
        config = replace(base, **{**zero, weight: 1.0}, freshness_boost=0.0)
        out[name] = {u: [s.item_id for s in service.rank_uncached(RecoParams(u, k), config).items]
                     for u in users}
    store.close()
    return out


def score(ranked: dict[str, list[str]], split: LeaveLastOut, k: int) -> dict[str, float]:
    return score_rankings(ranked, targets_of(split.test), k)


def log_to_mlflow(settings: Settings, report: DemoReport, engine: str) -> str:
    """The scores of the served lists as an MLflow run (experiment `served-evaluation`, next to
    the training runs): the blend's weights as parameters, one metric per method and measure
    ("served_blend.hr_at_10", ...) and the API's latency. Returns the run id."""
    from spark_jobs import tracking  # imports mlflow: only when logging

    uri = settings.mlflow_tracking_uri
    run_id = tracking.start_run(uri, "served", engine, asdict(RankConfig.from_settings(settings)),
                                {"users": report.users, "events": report.events_replayed})
    metrics = {f"{_metric_key(method)}.{name}": value
               for method, scores in report.metrics.items()
               for name, value in scores.items() if name != "users"}
    metrics |= {f"latency_ms.{name}": ms for name, ms in report.latency_ms.items()}
    tracking.log_metrics(uri, run_id, metrics)
    tracking.set_tags(uri, run_id, {f"dag_run.{dag}": state
                                    for dag, state in report.dag_runs.items()})
    return run_id


def _metric_key(method: str) -> str:
    """'served (blend)' -> 'served_blend', 'co-view alone' -> 'co_view_alone'."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")


def run_demo(settings: Settings, console: Console, opts: DemoOptions) -> DemoReport:
    steps = Steps(console)
    if opts.start_stack:
        with steps.step("1/6 Starting the local stack (reco up)"):
            local.up(settings, console)
    with steps.step("2/6 Loading MovieLens-100k and holding out each user's last interaction"):
        events, items = load_movielens(settings)
        split = leave_last_out(slice_users(events, opts.max_users))
        users = sorted(split.test["user_id"].unique())
        console.print(f"{len(events):,} ratings; {len(split.history):,} events to replay for "
                      f"{len(users):,} users; {len(split.test):,} held out")
    with steps.step("3/6 Replaying the history through the ingest API"):
        item_table = pa.Table.from_pandas(known_catalogue(items, split.history),
                                          preserve_index=False)
        summary = replay_table(
            pa.Table.from_pandas(split.history, preserve_index=False),
            ReplayOptions(url=f"http://127.0.0.1:{settings.ingest_port}"), items=item_table)
        console.print(f"accepted {summary.accepted:,} of {summary.sent:,} events "
                      f"({summary.rejected} rejected, {summary.failed} failed) in "
                      f"{summary.elapsed_s:.1f}s")
        if summary.accepted != summary.sent:
            raise RuntimeError(f"replay lost events: stopped: {summary.stopped}; last failure: "
                               f"{summary.last_failure}; {summary.rejections.most_common(5)}")
    with steps.step("4/6 Waiting for the processor and the archiver to catch up (lag 0)"):
        wait_for_zero_lag(settings.kafka_bootstrap,
                          [settings.group_processor, settings.group_archiver],
                          settings.topic_events, opts.lag_timeout_s,
                          on_poll=status_printer(console, "  lag "))
    with steps.step("5/6 Training Item2Vec, ALS and SASRec through Airflow"):
        span_days = (split.history["timestamp"].max() - split.history["timestamp"].min()) / 86.4e6
        dag_runs = train_through_airflow(settings, opts, console, int(span_days) + 2)
    with steps.step("6/6 Asking the recommendation API for every user"):
        ranked, latencies, strategies = served_recommendations(
            settings, users, opts.k, opts.concurrency)
        results = {"served (blend)": score(ranked, split, opts.k),
                   "popularity baseline": score(
                       popularity_baseline(settings, split.history, users, opts.k), split, opts.k)}
        for name, per_user in single_signal_rankings(settings, users, opts.k).items():
            results[f"{name} alone"] = score(per_user, split, opts.k)
    return DemoReport(
        users=len(users), events_replayed=summary.accepted, metrics=results,
        latency_ms={f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)}
        | {"max": float(latencies.max())},
        strategies=strategies, timings_s=steps.timings, dag_runs=dag_runs,
    )
