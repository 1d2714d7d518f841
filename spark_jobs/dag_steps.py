"""What each Airflow task runs: read the run's params, build the config, call one step.

DAG files stay thin wiring; this module is imported only inside tasks (never at DAG parse).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs import pipeline

if TYPE_CHECKING:
    from reco.settings import Settings

STEPS = {
    "train": pipeline.train_step,
    "evaluate": pipeline.evaluate_step,
    "gate": pipeline.gate_step,
    "publish": pipeline.publish_step,
}


def run_config(settings: Settings, model: str, params: Mapping[str, Any], run_id: str,
               interval_end: datetime | None, state: dict | None,
               now: datetime | None = None) -> pipeline.PipelineConfig:
    """One task's config from the DAG run's params, run id and data interval end.

    Later tasks (a `state` carrying the first task's "config") reuse its run folder, engine,
    window and hyperparameters exactly, whatever the params say now. The first task takes the
    window end from the `window_end` param, else the run's interval end, else `now`; its run
    folder is `<offline dir>/<model>/<run id made a folder name>`.
    """
    if state and "config" in state:
        fixed = state["config"]
        return pipeline.config_from_settings(
            settings, model, run_dir=Path(fixed["run_dir"]), engine=fixed["engine"],
            window_days=fixed["window_days"],
            window_end=datetime.fromisoformat(fixed["window_end"]), params=fixed["params"])
    end_param = params.get("window_end") or ""
    end = (datetime.fromisoformat(end_param) if end_param
           else interval_end or now or datetime.now(UTC))
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return pipeline.config_from_settings(
        settings, model, run_dir=pipeline.runs_dir(settings, model) / folder,
        engine=params.get("engine") or None,
        window_days=int(params.get("window_days") or 0) or None, window_end=end,
        params=dict(params.get("hyperparameters") or {}))


def _config(model: str, state: dict | None) -> pipeline.PipelineConfig:
    from airflow.sdk import get_current_context

    from reco.settings import Settings

    context = get_current_context()
    return run_config(Settings(), model, context["params"], str(context["run_id"]),
                      context.get("data_interval_end"), state)


def extract(model: str) -> dict:
    cfg = _config(model, None)
    state = pipeline.extract_step(cfg)
    return {**state, "config": config_state(cfg)}


def config_state(cfg: pipeline.PipelineConfig) -> dict:
    """What later tasks need to rebuild the first task's config (plain JSON for XCom: the
    window end is the config's ISO 8601 string, the run folder a string)."""
    return {"run_dir": cfg.run_dir, "engine": cfg.engine, "window_days": cfg.window_days,
            "window_end": cfg.window_end, "params": cfg.params}


def step(name: str, model: str, state: dict) -> dict:
    return STEPS[name](_config(model, state), state)
