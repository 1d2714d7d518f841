"""The main job (`make demo`): MovieLens-100k through the whole platform, measured at the API.

Steps: start the stack, load the data, hold out each user's last interaction, replay the rest
through the ingest API, wait for the consumers, train through the Airflow DAGs, then ask the
recommendation API for every user and score the answers against the held-out items.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import Console

from reco.airflow_client import AirflowClient
from reco.data import movielens
from reco.data.schema import EVENTS_FILE, ITEMS_FILE
from reco.evaluation_split import leave_last_out
from reco.lag import wait_for_zero_lag
from reco.replay import ReplayOptions, replay_table
from reco.served_evaluation import DemoReport, evaluate_served
from reco.settings import Settings
from reco.stack import local
from spark_jobs import ENGINES, SPARK_MODELS

DAGS = {"item2vec_daily": "item2vec", "als_weekly": "als", "sasrec_daily": "sasrec"}  # -> model
LOADED_FILE = "demo-loaded.json"  # under the state folder: what the last demo replayed


class NoDemoData(RuntimeError):
    """`reco evaluate` before any `reco demo` on this stack."""


@dataclass(frozen=True)
class LoadedDemo:
    max_users: int | None
    engine: str
    events_replayed: int


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
    # What `reco evaluate` needs to score the same users again later.
    save_loaded(settings, LoadedDemo(opts.max_users, opts.engine, summary.accepted))
    with steps.step("6/6 Asking the recommendation API for every user"):
        report = evaluate_served(settings, split, opts.k, opts.concurrency, summary.accepted)
    report.timings_s, report.dag_runs = steps.timings, dag_runs
    return report


def save_loaded(settings: Settings, loaded: LoadedDemo) -> None:
    path = settings.state_dir / LOADED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(loaded)))


def last_loaded(settings: Settings) -> LoadedDemo:
    """What the last `reco demo` replayed into this stack (NoDemoData if none ran)."""
    path = settings.state_dir / LOADED_FILE
    if not path.exists():
        raise NoDemoData(f"no demo data in this stack ({path.resolve()} is missing): run "
                         "`reco demo` first")
    return LoadedDemo(**json.loads(path.read_text()))


def run_evaluation(settings: Settings, opts: DemoOptions) -> tuple[DemoReport, LoadedDemo]:
    """Score what the running API serves now on the users and held-out items of the last
    demo (after retraining, a promotion or a change of weights), without replaying."""
    loaded = last_loaded(settings)
    events, _ = load_movielens(settings)
    split = leave_last_out(slice_users(events, loaded.max_users))
    return evaluate_served(settings, split, opts.k, opts.concurrency,
                           loaded.events_replayed), loaded
