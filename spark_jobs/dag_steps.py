"""What each Airflow task runs: read the run's params, build the config, call one step.

DAG files stay thin wiring; this module is imported only inside tasks (never at DAG parse).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs import PROMOTE, RUN_PARAMS, BadRunInput, as_utc, pipeline

if TYPE_CHECKING:
    from reco.settings import Settings

log = logging.getLogger(__name__)

STEPS = {
    "train": pipeline.train_step,
    "evaluate": pipeline.evaluate_step,
    "gate": pipeline.gate_step,
    "publish": pipeline.publish_step,
}


def run_config(settings: Settings, model: str, params: Mapping[str, Any], run_id: str,
               interval_end: datetime | None, state: dict | None,
               now: datetime | None = None,
               run_tags: Mapping[str, str] | None = None) -> pipeline.PipelineConfig:
    """One task's config from the DAG run's params, run id and data interval end.

    Later tasks (a `state` carrying the first task's "config") reuse its run folder, engine,
    window, hyperparameters, MLflow tags and promotion hold exactly, whatever the params say
    now. The first task takes the window end from the `window_end` param, else the run's
    interval end, else `now`; its run folder is `<offline dir>/<model>/<run id made a folder
    name>`. Bad params raise `BadRunInput` naming the param.
    """
    if state and "config" in state:
        fixed = state["config"]
        return pipeline.config_from_settings(
            settings, model, run_dir=Path(fixed["run_dir"]), engine=fixed["engine"],
            window_days=fixed["window_days"],
            window_end=datetime.fromisoformat(fixed["window_end"]), params=fixed["params"],
            run_tags=fixed.get("run_tags", {}), hold=fixed.get("hold", ""),
            experiment=fixed.get("experiment", False))
    now = now or datetime.now(UTC)
    end = window_end_param(params.get("window_end") or "", now) or interval_end or now
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    try:
        cfg = pipeline.config_from_settings(
            settings, model, run_dir=pipeline.runs_dir(settings, model) / folder,
            engine=params.get("engine") or None,
            window_days=int(params.get("window_days") or 0) or None, window_end=end,
            params=dict(params.get("hyperparameters") or {}), run_tags=dict(run_tags or {}))
    except ValueError as exc:  # engine or hyperparameters: the same run fails alike
        raise BadRunInput(str(exc)) from None
    return with_promotion(settings, cfg, params.get("promote") or "auto")


def with_promotion(settings: Settings, cfg: pipeline.PipelineConfig, promote: str
                   ) -> pipeline.PipelineConfig:
    """`cfg` marked as an experiment or not, and held from promotion as `promote` says (DAG
    runs and `reco train` alike)."""
    overridden = overrides(settings, cfg)
    return dataclasses.replace(cfg, experiment=bool(overridden),
                               hold=promotion_hold(promote, overridden))


def overrides(settings: Settings, cfg: pipeline.PipelineConfig) -> list[str]:
    """The params in which the run differs from what its schedule trains (an experiment)."""
    hp = cfg.hyperparameters()
    changed = {"engine": cfg.engine != pipeline.default_engine(settings, cfg.model),
               "window_days": cfg.window_days != settings.train_window_days,
               "hyperparameters": hp != type(hp)()}
    return [name for name, differs in changed.items() if differs]


def promotion_hold(promote: str, overridden: list[str]) -> str:
    """Why the gate may not promote the run ('' when it may): a manual experiment replaced
    the served model on its lift alone (with 580 fewer users having lists) within 90 s."""
    if promote not in PROMOTE:
        raise BadRunInput(f"promote {promote!r} is not one of {list(PROMOTE)}")
    if promote == "never":
        return "the run's promote param is 'never'"
    if promote == "auto" and overridden:
        return (f"an experiment ({', '.join(overridden)} overridden) with promote 'auto': "
                "experiments are registered, not promoted")
    return ""


def check_conf(conf: Mapping[str, Any] | None) -> None:
    """Refuse run conf keys the DAG does not declare: Airflow passes them on unread, so a
    misspelt one ({"windowdays": 3}) trained on the defaults, and was promoted."""
    unknown = sorted(set(conf or {}) - set(RUN_PARAMS))
    if not unknown:
        return
    hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
        key, RUN_PARAMS, n=1)) else repr(key) for key in unknown]
    raise BadRunInput(f"unknown run conf keys: {', '.join(hints)}; the accepted keys are "
                      f"{', '.join(RUN_PARAMS)}")


def window_end_param(value: str, now: datetime) -> datetime | None:
    """The `window_end` param as a UTC time (None when empty). One in the future is refused:
    the run would become a champion trained "up to" that date, and the gate would refuse
    every scheduled run until then as a backfill (its window ending before the champion's)."""
    if not value:
        return None
    try:
        end = as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise BadRunInput(f"window_end {value!r} is not an ISO 8601 date or date-time (e.g. "
                          "2026-01-31 or 2026-01-31T00:00:00+00:00)") from None
    if end > now:
        raise BadRunInput(f"window_end {value!r} is in the future (now {now:%Y-%m-%d %H:%M} "
                          "UTC): its model would outrank every scheduled run until then")
    return end


def airflow_tags(context: Mapping[str, Any]) -> dict[str, str]:
    """MLflow run tags linking a run to its Airflow DAG run (the MLflow UI can filter by them)."""
    dag_run = context["dag_run"]
    logical = dag_run.logical_date  # None for runs triggered without one (Airflow 3)
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
    return {"airflow.dag_id": dag_run.dag_id, "airflow.run_id": dag_run.run_id,
            "airflow.run_type": str(run_type),
            "airflow.logical_date": logical.isoformat() if logical else ""}


@contextlib.contextmanager
def failing_without_retry() -> Iterator[None]:
    """A `BadRunInput` fails the task at once: each retry (two, minutes apart) would fail
    alike. Other errors (a server down, a timeout) keep the task's retries."""
    try:
        yield
    except BadRunInput as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


def _config(model: str, state: dict | None,
            context: Mapping[str, Any] | None = None) -> pipeline.PipelineConfig:
    from airflow.sdk import get_current_context

    from reco.settings import Settings

    context = context or get_current_context()
    return run_config(Settings(), model, context["params"], str(context["run_id"]),
                      context.get("data_interval_end"), state,
                      run_tags=airflow_tags(context))


def extract(model: str, context: Mapping[str, Any] | None = None) -> dict:
    """The first task; `context` is the running task's unless given."""
    from airflow.sdk import get_current_context

    context = context or get_current_context()
    with failing_without_retry():
        check_conf(getattr(context["dag_run"], "conf", None))
        cfg = _config(model, None, context)
        state = pipeline.extract_step(cfg)
    return {**state, "config": config_state(cfg)}


def config_state(cfg: pipeline.PipelineConfig) -> dict:
    """What later tasks need to rebuild the first task's config (plain JSON for XCom: the
    window end is the config's ISO 8601 string, the run folder a string)."""
    return {"run_dir": cfg.run_dir, "engine": cfg.engine, "window_days": cfg.window_days,
            "window_end": cfg.window_end, "params": cfg.params, "run_tags": cfg.run_tags,
            "hold": cfg.hold, "experiment": cfg.experiment}


def step(name: str, model: str, state: dict) -> dict:
    with failing_without_retry():
        return STEPS[name](_config(model, state), state)


def serve_champions(models: Sequence[str]) -> dict[str, dict]:
    """The `serve_champions` DAG's task: Redis serves each model's registry champion. One
    model failing does not stop the others; the task then fails naming each and why."""
    from reco.settings import Settings
    from spark_jobs import champion

    settings, served, failed = Settings(), {}, {}
    for model in models:
        try:
            served[model] = champion.serve_champion(
                pipeline.config_from_settings(settings, model))
        except Exception as exc:  # noqa: BLE001 - reported below, after the other models
            log.exception("serving %s's champion failed", model)
            failed[model] = f"{type(exc).__name__}: {exc}"
    if failed:
        raise RuntimeError("serving the champion failed for " + "; ".join(
            f"{model} ({reason})" for model, reason in failed.items()))
    return served
