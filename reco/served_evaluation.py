"""Scoring what the API serves against held-out items: the demo's last step and
`reco evaluate`, logged to MLflow (experiment `served-evaluation`) with the model versions
the answers were ranked with."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx
import numpy as np
import pandas as pd

from reco.evaluation_split import LeaveLastOut, score_rankings, targets_of
from reco.ranking import RankConfig
from reco.settings import Settings

BASELINE = "popularity baseline"


@dataclass
class DemoReport:
    users: int
    events_replayed: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> HR/NDCG/...
    latency_ms: dict[str, float] = field(default_factory=dict)
    strategies: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    dag_runs: dict[str, str] = field(default_factory=dict)
    # model -> the version the API's answers were ranked with (several: "v1,v2")
    model_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedAnswers:
    ranked: dict[str, list[str]]  # user -> item ids, best first
    latencies_ms: np.ndarray
    strategies: dict[str, int]
    model_versions: dict[str, str]


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


def versions_answered(bodies: Iterable[dict[str, Any]]) -> dict[str, str]:
    """model -> the versions the answers name, comma-joined: more than one when a publish
    landed during the evaluation. Popular and fallback answers name none."""
    seen: dict[str, set[str]] = {}
    for body in bodies:
        for model, version in body.get("model_versions", {}).items():
            seen.setdefault(model, set()).add(version)
    return {model: ",".join(sorted(found)) for model, found in sorted(seen.items())}


def served_recommendations(settings: Settings, users: list[str], k: int, concurrency: int
                           ) -> ServedAnswers:
    """Ask the API for every user: their lists, the latencies, strategies and versions."""
    base = f"http://127.0.0.1:{settings.reco_port}"
    paths = [f"/recommendations?user_id={u}&k={k}" for u in users]
    answers = asyncio.run(_fetch_all(base, paths, concurrency))
    bodies = [body for body, _ in answers]
    ranked = {u: [i["item_id"] for i in body["items"]]
              for u, body in zip(users, bodies, strict=True)}
    return ServedAnswers(ranked, np.array([ms for _, ms in answers]),
                         dict(Counter(body["strategy"] for body in bodies)),
                         versions_answered(bodies))


def popularity_baseline(settings: Settings, history: pd.DataFrame, users: list[str], k: int
                        ) -> dict[str, list[str]]:
    """The API's /popular list with each user's seen items removed (full ranking over unseen)."""
    base = f"http://127.0.0.1:{settings.reco_port}"
    body = httpx.get(f"{base}/popular", params={"k": 100}, timeout=10).raise_for_status().json()
    popular = [i["item_id"] for i in body["items"]]
    seen = history.groupby("user_id")["item_id"].agg(set).to_dict()
    return {u: [i for i in popular if i not in seen.get(u, set())][:k] for u in users}


# Popularity alone is left out: ranked by the served path with only its weight, it is the
# baseline's list (the most popular items the user has not seen) up to the category cap and
# the bounded seen set, so it printed the baseline's figures under a second name.
SIGNAL_WEIGHTS = {"co-view": "w_coview", "embedding": "w_embed", "recency": "w_recency",
                  "ALS": "w_cf", "SASRec": "w_seq"}


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
    try:
        signals.refresh()
        service = RecoService(reader_settings, store, signals)
        base = RankConfig.from_settings(settings)
        zero = dict.fromkeys([*SIGNAL_WEIGHTS.values(), "w_pop"], 0.0)
        out = {}
        for name, weight in SIGNAL_WEIGHTS.items():
            config = replace(base, **{**zero, weight: 1.0}, freshness_boost=0.0)
            out[name] = {u: [s.item_id for s in service.rank_uncached(
                RecoParams(u, k), config).items] for u in users}
        return out
    finally:
        signals.stop()  # its Redis clients (no refresh task: never started)
        store.close()


def score(ranked: dict[str, list[str]], split: LeaveLastOut, k: int) -> dict[str, float]:
    return score_rankings(ranked, targets_of(split.test), k)


def evaluate_served(settings: Settings, split: LeaveLastOut, k: int, concurrency: int,
                    events_replayed: int) -> DemoReport:
    """Every held-out user's served list scored, next to the popularity baseline and each
    signal alone, with the API's latency and the model versions it answered with."""
    users = sorted(split.test["user_id"].unique())
    served = served_recommendations(settings, users, k, concurrency)
    results = {"served (blend)": score(served.ranked, split, k),
               BASELINE: score(popularity_baseline(settings, split.history, users, k), split, k)}
    for name, per_user in single_signal_rankings(settings, users, k).items():
        results[f"{name} alone"] = score(per_user, split, k)
    latencies = served.latencies_ms
    return DemoReport(
        users=len(users), events_replayed=events_replayed, metrics=results,
        latency_ms={f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)}
        | {"max": float(latencies.max())},
        strategies=served.strategies, model_versions=served.model_versions,
    )


def log_to_mlflow(settings: Settings, report: DemoReport, engine: str) -> str:
    """The scores of the served lists as an MLflow run (experiment `served-evaluation`, next to
    the training runs): the blend's weights and the model versions answering
    ("model_versions.als", ...) as parameters, one metric per method and measure
    ("served_blend.hr_at_10", ...) and the API's latency. Returns the run id."""
    from spark_jobs import tracking  # imports mlflow: only when logging

    uri = settings.mlflow_tracking_uri
    params = asdict(RankConfig.from_settings(settings)) | {
        f"model_versions.{model}": version for model, version in report.model_versions.items()}
    run_id = tracking.start_run(uri, "served", engine, params,
                                {"users": report.users, "events": report.events_replayed})
    metrics = {f"{_metric_key(method)}.{name}": value
               for method, scores in report.metrics.items()
               for name, value in scores.items() if name != "users"}
    metrics |= {f"latency_ms.{name}": ms for name, ms in report.latency_ms.items()}
    try:
        tracking.log_metrics(uri, run_id, metrics)
        tracking.set_tags(uri, run_id, {f"dag_run.{dag}": state
                                        for dag, state in report.dag_runs.items()})
    except BaseException:
        with contextlib.suppress(Exception):  # the logging's own error is the one to raise
            tracking.finish_run(uri, run_id, failed=True)
        raise
    tracking.finish_run(uri, run_id)  # else RUNNING for ever in the MLflow UI
    return run_id


def _metric_key(method: str) -> str:
    """'served (blend)' -> 'served_blend', 'co-view alone' -> 'co_view_alone'."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")
