"""The offline pipeline as plain functions: extract -> train -> evaluate -> gate -> publish.

Airflow tasks and `reco train` call these same functions. Each step takes a `PipelineConfig`
plus the small dict the previous step returned (paths and ids, never data) and returns one.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from spark_jobs import ENGINES, MODELS, SPARK_MODELS, BadRunInput, as_utc, tracking
from spark_jobs import extract as ex

if TYPE_CHECKING:
    import redis
    from psycopg import Connection
    from psycopg.rows import TupleRow
    from pyspark.sql import SparkSession
    from redis.lock import Lock

    from reco.settings import Settings
    from spark_jobs.als import ALSParams
    from spark_jobs.item2vec import Item2VecParams
    from spark_jobs.sasrec import SASRecParams

log = logging.getLogger(__name__)

# What each model's training (and every evaluation) reads from an extract: only these are built.
EXTRACT_DATASETS = {
    "item2vec": (ex.TRAIN_EVENTS, ex.HOLDOUT, ex.INTERACTIONS, ex.SESSIONS, ex.SESSIONS_FULL),
    "als": (ex.TRAIN_EVENTS, ex.HOLDOUT, ex.INTERACTIONS, ex.INTERACTIONS_FULL),
    "sasrec": (ex.TRAIN_EVENTS, ex.HOLDOUT, ex.INTERACTIONS, ex.INTERACTIONS_FULL),
}


@dataclass(frozen=True)
class PipelineConfig:
    model: str
    engine: str
    run_dir: str
    window_days: int
    window_end: str  # ISO 8601, UTC
    params: dict = field(default_factory=dict)
    run_tags: dict = field(default_factory=dict)  # MLflow tags of the run (its Airflow DAG run)
    hold: str = ""  # why the gate may not promote this run (dag_steps.promotion_hold); '': it may
    experiment: bool = False  # overrides what its schedule trains (dag_steps.overrides)
    events_retention_days: int = 0  # RECO_EVENTS_RETENTION_DAYS: older events are gone
    jdbc_url: str = ""
    pg_user: str = ""
    pg_password: str = field(default="", repr=False)
    database_url: str = field(default="", repr=False)
    # Settings.pseudonym_keys: erasures' pseudonyms, the current key first.
    pseudonym_keys: tuple[str, ...] = field(default=(), repr=False)
    redis_url: str = ""
    mlflow_tracking_uri: str = ""
    event_weights: dict = field(default_factory=dict)
    session_gap_s: float = 1800.0
    half_life_days: float = 30.0
    jdbc_partitions: int = 4
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    jars_dir: str = ""
    jdbc_driver_path: str = ""  # a JDBC jar to use as is; empty: fetch one into jars_dir
    runs_dir: str = ""  # the model's folder of run folders (`runs_dir`)
    keep_runs: int = 0  # run folders kept there after a publish (`prune_runs`); 0: all
    keep_versions: int = 0  # registry versions kept after a publish (registry_retention); 0: all
    eval_k: int = 10
    recent_n: int = 10
    eval_max_users: int = 50_000
    gate_tolerance: float = 0.02
    gate_min_user_coverage: float = 0.9  # share of the champion's users a run must have lists for
    publish_batch: int = 5000
    publish_grace_s: int = 3600
    blend_max_users: int = 2000
    blend_replay_s: float = 7 * 86400.0  # co-view/popularity replay: the co-view TTL
    coview_max: int = 200  # co-view set size, as the processor trims it
    rank_config: dict = field(default_factory=dict)  # reco.ranking.RankConfig fields
    feature_params: dict = field(default_factory=dict)  # reco.features.FeatureParams fields

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: expected one of {MODELS}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: expected 'local' or 'spark'")
        if self.engine == "spark" and self.model not in SPARK_MODELS:
            raise ValueError(f"{self.model} has no Spark engine: use engine 'local'")
        self.hyperparameters()  # unknown names fail before any work starts

    def hyperparameters(self) -> Item2VecParams | ALSParams | SASRecParams:
        from spark_jobs.als import ALSParams
        from spark_jobs.item2vec import Item2VecParams
        from spark_jobs.sasrec import SASRecParams

        cls = {"item2vec": Item2VecParams, "als": ALSParams, "sasrec": SASRecParams}[self.model]
        return cls.from_dict(self.params, self.engine)

    @property
    def window(self) -> tuple[datetime, datetime]:
        end = as_utc(datetime.fromisoformat(self.window_end))
        return end - timedelta(days=self.window_days), end


def _coverage_checked(cfg: PipelineConfig) -> float:
    """The share of the champion's users the run must cover: only an experiment's is checked.
    A scheduled run trains the configured window, whose users vary with traffic (fewer after a
    peak season): held to the champion's count, retraining would stop until traffic returned."""
    return cfg.gate_min_user_coverage if cfg.experiment else 0.0


def default_engine(settings: Settings, model: str) -> str:
    """The engine a run of `model` trains with when none is asked for (its schedule's)."""
    return settings.engine if model in SPARK_MODELS else "local"


def config_from_settings(settings: Settings, model: str, run_dir: Path | None = None,
                         engine: str | None = None, window_days: int | None = None,
                         window_end: datetime | None = None, params: dict | None = None,
                         **overrides: Any) -> PipelineConfig:
    """Entry points (DAG tasks, CLI) turn `Settings` plus run parameters into a config."""
    from reco.features import FeatureParams
    from reco.ranking import RankConfig

    state = Path(settings.state_dir)
    end = as_utc(window_end or datetime.now(UTC))
    if run_dir is None:  # one per run: two runs of one window overwrote each other's files
        run_dir = runs_dir(settings, model) / f"{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    values = dict(
        model=model, engine=engine or default_engine(settings, model),
        run_dir=str(run_dir), runs_dir=str(runs_dir(settings, model)),
        keep_runs=settings.offline_keep_runs, keep_versions=settings.offline_keep_versions,
        window_days=window_days or settings.train_window_days, window_end=end.isoformat(),
        events_retention_days=settings.events_retention_days,
        params=dict(params or {}), jdbc_url=settings.jdbc_url, pg_user=settings.pg_user,
        pg_password=settings.pg_password.get_secret_value(), database_url=settings.database_url,
        pseudonym_keys=tuple(settings.pseudonym_keys),
        redis_url=settings.redis_url, mlflow_tracking_uri=settings.mlflow_tracking_uri,
        event_weights=dict(settings.event_weights), session_gap_s=settings.session_gap_s,
        half_life_days=settings.recency_half_life_days, jdbc_partitions=settings.jdbc_partitions,
        spark_master=settings.spark_master, spark_driver_memory=settings.spark_driver_memory,
        jars_dir=str(settings.spark_jars_dir or state / "jars"), eval_k=settings.eval_k,
        jdbc_driver_path=str(settings.jdbc_driver_path or ""),
        recent_n=settings.reco_recent_n, gate_tolerance=settings.gate_tolerance,
        gate_min_user_coverage=settings.gate_min_user_coverage,
        publish_batch=settings.publish_batch, publish_grace_s=settings.publish_grace_s,
        blend_replay_s=float(settings.coview_ttl_s), coview_max=settings.coview_max,
        rank_config=asdict(RankConfig.from_settings(settings)),
        feature_params=asdict(FeatureParams.from_settings(settings)),
    )
    values.update(overrides)
    return PipelineConfig(**values)


def run_name(cfg: PipelineConfig) -> str:
    """The MLflow run's name: its model, engine and the window it trained on (runs of one
    window, a retry or another try at hyperparameters, share it)."""
    start, end = cfg.window
    return f"{cfg.model}-{cfg.engine}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"


def runs_dir(settings: Settings, model: str) -> Path:
    """Where a model's run folders go: `<offline dir>/<model>/`."""
    return Path(settings.offline_dir or Path(settings.state_dir) / "offline") / model


# A run folder's marker that its run published (or found nothing to publish): done with it.
FINISHED_MARKER = "finished"
# An unfinished run folder unchanged this long belongs to a failed or abandoned run: each step
# adds a folder and runs at most an hour (the tasks' execution_timeout), retries 2 min apart.
ABANDONED_AFTER_S = 86400.0


def prune_runs(cfg: PipelineConfig, now: float | None = None) -> list[Path]:
    """Delete the model's finished (or abandoned) run folders but the newest `keep_runs` (by
    last change), this run's always kept: the disk would fill with window copies and models
    that MLflow holds anyway. Runs still in progress are left alone: backfills run several
    at once, and a folder deleted under one fails its later tasks. Only a run folder in
    `runs_dir` prunes its siblings (a test's or a benchmark's does not)."""
    run_dir = Path(cfg.run_dir)
    if not cfg.keep_runs or run_dir.parent != Path(cfg.runs_dir):
        return []
    now = time.time() if now is None else now
    changed = {d: _last_change(d) for d in run_dir.parent.iterdir()
               if d.is_dir() and d != run_dir}
    done = [d for d, at in changed.items()
            if (d / FINISHED_MARKER).exists() or now - at > ABANDONED_AFTER_S]
    pruned = sorted(done, key=changed.__getitem__, reverse=True)[cfg.keep_runs - 1:]
    for folder in pruned:
        shutil.rmtree(folder, ignore_errors=True)  # another run may be pruning it too
    return pruned


def _last_change(folder: Path) -> float:
    """The newest change of a run folder or its step folders (each step adds one), so a run
    still in progress counts as recent."""
    try:
        return max(p.stat().st_mtime for p in (folder, *folder.iterdir()))
    except FileNotFoundError:  # pruned meanwhile
        return 0.0


def spark_session(cfg: PipelineConfig) -> SparkSession:
    import pyspark

    from reco.stack.servers import jdbc_driver_jar
    from spark_jobs.session import build_session

    jar = jdbc_driver_jar(Path(cfg.jars_dir),
                          Path(cfg.jdbc_driver_path) if cfg.jdbc_driver_path else None)
    archive = Path(cfg.jars_dir) / f"spark-{pyspark.__version__}-classes.jsa"
    return build_session(f"reco-{cfg.model}", cfg.spark_master, cfg.spark_driver_memory,
                         jars=[jar], shuffle_partitions=max(2, cfg.jdbc_partitions),
                         class_archive=archive)


def _connect(cfg: PipelineConfig) -> Connection[TupleRow]:
    import psycopg

    return psycopg.connect(cfg.database_url, autocommit=True)


def extract_step(cfg: PipelineConfig, spark: SparkSession | None = None,
                 now: datetime | None = None) -> dict:
    from spark_jobs import erased_users

    started = time.perf_counter()
    start, end = cfg.window
    kept_from = (now or datetime.now(UTC)) - timedelta(days=cfg.events_retention_days)
    if cfg.events_retention_days and start < kept_from:  # 0 keeps every event
        # Trained on what is left, the run would pass for one of the whole window.
        raise BadRunInput(
            f"the window starts at {start:%Y-%m-%d %H:%M} UTC, before the events kept "
            f"(RECO_EVENTS_RETENTION_DAYS={cfg.events_retention_days}: from "
            f"{kept_from:%Y-%m-%d %H:%M} UTC): shorten window_days or move window_end")
    spark = spark or spark_session(cfg)
    source = ex.JdbcSource(cfg.jdbc_url, cfg.pg_user, cfg.pg_password, cfg.jdbc_partitions)
    out = Path(cfg.run_dir) / "extract"
    manifest = ex.extract(spark, source, start, end, cfg.event_weights, cfg.session_gap_s,
                          cfg.half_life_days, out, EXTRACT_DATASETS[cfg.model],
                          read_at=erased_users.database_now(cfg.database_url))
    if manifest["train_events"] == 0:
        raise BadRunInput(f"no training events between {start} and {end}: the window "
                          "(window_end, window_days) holds none")
    detail = {f"extract.{k}": v for k, v in manifest["timings"].items()}
    return {"extract_dir": str(out), "events": manifest["events"],
            "timings": {"extract_s": time.perf_counter() - started, **detail}}


def train_step(cfg: PipelineConfig, extracted: dict,
               spark: SparkSession | None = None) -> dict:
    from spark_jobs import als, erased_users, item2vec, sasrec

    extract_dir = Path(extracted["extract_dir"])
    manifest = json.loads((extract_dir / ex.MANIFEST).read_text())
    hp = cfg.hyperparameters()
    run_id = tracking.start_run(cfg.mlflow_tracking_uri, cfg.model, cfg.engine,
                                hp.used_by(cfg.engine),
                                manifest, run_name=run_name(cfg), tags=cfg.run_tags)
    model_id = registry_version = None
    try:
        if cfg.engine == "spark":
            spark = spark or spark_session(cfg)
        timings: dict = {}
        fit, held_out_data, full_data = {
            "item2vec": (item2vec.fit, ex.SESSIONS, ex.SESSIONS_FULL),
            "als": (als.fit, ex.INTERACTIONS, ex.INTERACTIONS_FULL),
            "sasrec": (sasrec.fit, ex.INTERACTIONS, ex.INTERACTIONS_FULL),
        }[cfg.model]
        # Evaluated: trained without each user's held-out last interaction.
        eval_timings: dict = {}
        eval_model_dir = Path(cfg.run_dir) / "eval_model"
        evaluated = fit(extract_dir / held_out_data, hp, cfg.engine, spark, eval_timings)
        evaluated.save(eval_model_dir)
        timings["eval_train_s"] = sum(eval_timings.values())
        # Served: the same hyperparameters refit on the whole window (SASRec: the evaluated
        # network refit for a few epochs on the whole window's sequences; spark_jobs.sasrec).
        if cfg.model == "sasrec":
            fit = functools.partial(sasrec.fit, warm_start=eval_model_dir)
        model = fit(extract_dir / full_data, hp, cfg.engine, spark, timings)
        model_dir = Path(cfg.run_dir) / "model"
        model.save(model_dir)
        _log_loss_curves(cfg.mlflow_tracking_uri, run_id, evaluated, model)
        (model_dir / "params.json").write_text(json.dumps(
            {"model": cfg.model, "engine": cfg.engine, **hp.used_by(cfg.engine),
             erased_users.READ_AT: manifest.get("read_at")}, indent=2))
        version = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{run_id[:8]}"
        model_id = tracking.log_model(cfg.mlflow_tracking_uri, run_id, cfg.model, model_dir,
                                      version, {**hp.used_by(cfg.engine), "engine": cfg.engine})
        registry_version = tracking.register(cfg.mlflow_tracking_uri, cfg.model, run_id,
                                             model_id)
        tracking.set_tags(cfg.mlflow_tracking_uri, run_id, {tracking.PUBLISH_VERSION_TAG: version})
        tracking.log_metrics(cfg.mlflow_tracking_uri, run_id,
                             {f"time.{k}": v for k, v in timings.items()})
        with _connect(cfg) as conn:
            conn.execute(
                "INSERT INTO models (name, version, mlflow_run_id, status) VALUES (%s, %s, %s,"
                " 'trained') ON CONFLICT (name, version) DO NOTHING",
                (cfg.model, version, run_id))
    except BaseException:
        tracking.finish_run(cfg.mlflow_tracking_uri, run_id, failed=True)
        if model_id is not None:
            from spark_jobs import registry_retention

            registry_retention.discard_failed(cfg, model_id, registry_version)
        raise
    return {**extracted, "model_dir": str(model_dir), "eval_model_dir": str(eval_model_dir),
            "run_id": run_id, "version": version, "model_id": model_id,
            "registry_version": registry_version,
            "timings": {**extracted.get("timings", {}), **timings}}


def evaluate_step(cfg: PipelineConfig, trained: dict) -> dict:
    """Score the run and finish it; on any failure the run ends FAILED (a retry of this step
    logs to it again and finishes it)."""
    uri, run_id = cfg.mlflow_tracking_uri, trained["run_id"]
    try:
        evaluated = _evaluate(cfg, trained)
    except BaseException:
        tracking.finish_run(uri, run_id, failed=True)
        raise
    tracking.finish_run(uri, run_id)
    return evaluated


def _evaluate(cfg: PipelineConfig, trained: dict) -> dict:
    from spark_jobs import evaluate as ev

    started = time.perf_counter()
    data = ev.EvalData(Path(trained["extract_dir"]), cfg.eval_max_users)
    model_dir = Path(trained["eval_model_dir"])
    if cfg.model == "item2vec":
        from spark_jobs.item2vec import Item2VecModel

        m = Item2VecModel.load(model_dir)
        scorer = ev.item2vec_scorer(data, m.item_ids, m.vectors, cfg.recent_n)
    elif cfg.model == "als":
        from spark_jobs.als import ALSModel

        m = ALSModel.load(model_dir)
        scorer = ev.als_scorer(data, m.user_ids, m.item_ids, m.user_factors, m.item_factors)
    else:
        from spark_jobs.sasrec import SASRecModel

        m = SASRecModel.load(model_dir)
        scorer = ev.candidates_scorer(data, m.user_ids, m.item_ids, m.cand_idx, m.cand_scores)
    report = ev.evaluate(data, {"model": scorer, "popularity": ev.popularity_scorer(data)},
                         cfg.eval_k)
    blend = ev.evaluate_blend(data, cfg.model, model_dir, cfg.eval_k, cfg.rank_config,
                              cfg.feature_params, cfg.coview_max, cfg.blend_max_users,
                              cfg.blend_replay_s)
    report["results"]["blend"] = blend["metrics"]
    report["curves"]["blend"] = blend["curve"]
    report["blend_weights"] = blend["weights"]
    report_dir = Path(cfg.run_dir) / "evaluation"
    ev.write_report(report, report_dir)
    flat = {f"{scorer_name}.{k}": v for scorer_name, values in report["results"].items()
            for k, v in values.items()}
    timings = {**trained.get("timings", {}), "evaluate_s": time.perf_counter() - started}
    uri, run_id = cfg.mlflow_tracking_uri, trained["run_id"]
    tracking.log_metrics(uri, run_id, {**flat, "time.evaluate_s": timings["evaluate_s"]},
                         trained.get("model_id"))
    tracking.set_tags(uri, run_id, {tracking.SPLIT_TAG: report["split"]})
    tracking.log_artifacts(uri, run_id, report_dir, tracking.EVALUATION_ARTIFACTS)
    with _connect(cfg) as conn:
        conn.execute("UPDATE models SET metrics = %s WHERE name = %s AND version = %s",
                     (orjson.dumps(flat).decode(), cfg.model, trained["version"]))
    return {**trained, "report": str(report_dir / ev.REPORT), "metrics": flat,
            "timings": timings}


# The `models` row of a gated run, by the gate's outcome.
_MODEL_STATUS = {"accepted": "champion", "held": "held", "rejected": "rejected"}


def gate_step(cfg: PipelineConfig, evaluated: dict) -> dict:
    import redis

    from spark_jobs import gate, publish

    report = json.loads(Path(evaluated["report"]).read_text())
    # Under the model's publish lock: two gates reading one champion could both promote, and
    # the later alias would win whichever window it was trained on.
    with (redis.Redis.from_url(cfg.redis_url) as client,
          publish.held_lock(client, cfg.model)):
        decision = gate.gate(cfg.mlflow_tracking_uri, cfg.model, evaluated["run_id"],
                             evaluated["registry_version"], report, cfg.gate_tolerance,
                             min_user_coverage=_coverage_checked(cfg), hold=cfg.hold)
    with _connect(cfg) as conn:
        conn.execute("UPDATE models SET status = %s WHERE name = %s AND version = %s",
                     (_MODEL_STATUS[decision.outcome], cfg.model, evaluated["version"]))
    return {**evaluated, "gate": decision.as_dict()}


def publish_step(cfg: PipelineConfig, gated: dict) -> dict:
    """Serve the champion: the new run if it passed, else make sure the champion is serving;
    then prune old run folders (the last step: nothing reads this run's folder after it) and
    old registry versions."""
    state = _serve(cfg, gated)
    if Path(cfg.run_dir).is_dir():
        (Path(cfg.run_dir) / FINISHED_MARKER).touch()
    prune_runs(cfg)
    from spark_jobs import registry_retention

    return {**state, "registry_retention": registry_retention.after_publish(cfg)}


def _serve(cfg: PipelineConfig, gated: dict) -> dict:
    """Everything from the first look at Redis to the record holds the model's publish lock."""
    import redis

    from spark_jobs import publish

    decision = gated["gate"]
    if not decision["accepted"] and decision["champion_run_id"] is None:
        reason = f"{_not_promoted(decision)} and no champion to serve"
        _tag_publish(cfg, gated, reason)
        return {**gated, "published": None, "reason": reason}
    with (redis.Redis.from_url(cfg.redis_url) as client,
          publish.held_lock(client, cfg.model) as lock):
        return _publish_locked(cfg, gated, client, lock)


def _publish_locked(cfg: PipelineConfig, gated: dict, client: redis.Redis,
                    lock: Lock) -> dict:
    from spark_jobs import champion

    accepted = gated["gate"]["accepted"]
    run_id = gated["run_id"] if accepted else gated["gate"]["champion_run_id"]
    current = tracking.champion(cfg.mlflow_tracking_uri, cfg.model)
    if current is None or current[1] != run_id:
        return _skipped(cfg, gated, _superseded(cfg, run_id, current))
    registry_version = current[0]
    if accepted:
        version, model_dir = gated["version"], Path(gated["model_dir"])
    else:
        version, model_dir = tracking.publish_version(cfg.mlflow_tracking_uri, run_id), None
    served = champion.serve_locked(cfg, client, lock, registry_version, version, model_dir,
                                   Path(cfg.run_dir) / "champion")
    if not accepted:  # `published` names the champion, not this run: say so
        kept = f"{_not_promoted(gated['gate'])}: the champion ({version}) serves"
        served["reason"] = f"{kept}, {served['reason']}" if "reason" in served else kept
        _tag_publish(cfg, gated, served["reason"])
    if "publish_s" in served:
        served["timings"] = {**gated.get("timings", {}), "publish_s": served.pop("publish_s")}
    return {**gated, **served}


def _superseded(cfg: PipelineConfig, run_id: str, current: tuple[str, str] | None) -> str:
    """Why the run the gate chose may not be served now, under the publish lock: another run
    became the champion since (a concurrent run, a backfill, `reco train` beside the DAG, a
    cleared old task, a promotion by hand)."""
    now = f"registry version {current[0]} (run {current[1]})" if current else "none"
    return f"run {run_id} is no longer the {cfg.model} champion (now: {now})"


def _not_promoted(decision: dict) -> str:
    return "held by its promote param" if decision.get("held") else "rejected by the gate"


def _tag_publish(cfg: PipelineConfig, gated: dict, reason: str) -> None:
    """Why the run's lists were not published, on the run (MLflow shows it beside the gate's);
    nothing to tag in a state without a run."""
    if "run_id" not in gated:
        return
    tracking.set_tags(cfg.mlflow_tracking_uri, gated["run_id"],
                      {"publish": "skipped", "publish.reason": reason})


def _skipped(cfg: PipelineConfig, gated: dict, reason: str) -> dict:
    log.warning("%s publish skipped: %s", cfg.model, reason)
    _tag_publish(cfg, gated, reason)
    return {**gated, "published": None, "reason": f"skipped: {reason}"}


def _log_loss_curves(uri: str, run_id: str, evaluated: object, served: object) -> None:
    """SASRec's mean training loss per epoch, as MLflow curves: `train.loss` of the evaluated
    network, `refit.loss` of its refit into the served one (the other models record none)."""
    for name, model in (("train.loss", evaluated), ("refit.loss", served)):
        if losses := getattr(model, "train_loss", None):
            tracking.log_curve(uri, run_id, name, losses)


def run_all(cfg: PipelineConfig, spark: SparkSession | None = None) -> dict:
    """Every step in one process (the CLI); reuses one SparkSession."""
    state = extract_step(cfg, spark)
    state = train_step(cfg, state, spark)
    state = evaluate_step(cfg, state)
    state = gate_step(cfg, state)
    return publish_step(cfg, state)
