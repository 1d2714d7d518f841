"""What each Airflow task runs: read the run's params, build the config, call one step.

DAG files stay thin wiring; this module is imported only inside tasks (never at DAG parse).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from spark_jobs import pipeline

STEPS = {
    "train": pipeline.train_step,
    "evaluate": pipeline.evaluate_step,
    "gate": pipeline.gate_step,
    "publish": pipeline.publish_step,
}


def _config(model: str, state: dict | None) -> pipeline.PipelineConfig:
    from airflow.sdk import get_current_context

    from reco.settings import Settings

    context = get_current_context()
    params = context["params"]
    settings = Settings()
    if state and "config" in state:  # later tasks reuse the first task's window and folder
        fixed = state["config"]
        return pipeline.config_from_settings(
            settings, model, run_dir=Path(fixed["run_dir"]), engine=fixed["engine"],
            window_days=fixed["window_days"],
            window_end=datetime.fromisoformat(fixed["window_end"]), params=fixed["params"])
    end_param = params.get("window_end") or ""
    end = (datetime.fromisoformat(end_param) if end_param
           else context.get("data_interval_end") or datetime.now(UTC))
    run_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(context["run_id"]))
    base = Path(settings.offline_dir or Path(settings.state_dir) / "offline")
    return pipeline.config_from_settings(
        settings, model, run_dir=base / model / run_id, engine=params.get("engine") or None,
        window_days=int(params.get("window_days") or 0) or None, window_end=end,
        params=dict(params.get("hyperparameters") or {}))


def extract(model: str) -> dict:
    cfg = _config(model, None)
    state = pipeline.extract_step(cfg)
    return {**state, "config": {"run_dir": cfg.run_dir, "engine": cfg.engine,
                                "window_days": cfg.window_days, "window_end": cfg.window_end,
                                "params": cfg.params}}


def step(name: str, model: str, state: dict) -> dict:
    return STEPS[name](_config(model, state), state)
