"""What an Airflow task turns its run's params, run id and interval end into (no Airflow)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.utils.types import DagRunType

from reco.settings import Settings
from spark_jobs import BadRunInput, dag_steps, pipeline

RUN_ID = "manual__2024-03-01T02:00:00+00:00"
INTERVAL_END = datetime(2024, 3, 1, 2, tzinfo=UTC)
NOW = datetime(2024, 3, 5, 12, 30, tzinfo=UTC)


def settings(tmp_path: Path, **values) -> Settings:
    return Settings(**{"state_dir": tmp_path / "state", "offline_dir": None, "engine": "local",
                       "train_window_days": 30, **values})


def first(s: Settings, params: dict, model: str = "als", run_id: str = RUN_ID,
          interval_end: datetime | None = INTERVAL_END):
    return dag_steps.run_config(s, model, params, run_id, interval_end, None, now=NOW)


def test_the_window_end_param_wins_over_the_interval_end_and_reads_as_utc(tmp_path):
    cfg = first(settings(tmp_path), {"window_end": "2024-01-10T06:00:00"})
    assert cfg.window_end == "2024-01-10T06:00:00+00:00"
    cfg = first(settings(tmp_path), {"window_end": "2024-01-10T06:00:00+02:00"})
    assert cfg.window_end == "2024-01-10T04:00:00+00:00"


def test_without_the_param_the_window_ends_at_the_interval_end_else_now(tmp_path):
    s = settings(tmp_path)
    assert first(s, {"window_end": ""}).window_end == INTERVAL_END.isoformat()
    assert first(s, {}).window_end == INTERVAL_END.isoformat()
    assert first(s, {}, interval_end=None).window_end == NOW.isoformat()
    # No `now` given: the clock.
    before = datetime.now(UTC)
    cfg = dag_steps.run_config(s, "als", {}, RUN_ID, None, None)
    assert before <= datetime.fromisoformat(cfg.window_end) <= datetime.now(UTC)


def test_airflows_interval_end_a_pendulum_datetime_in_any_zone_is_read_as_utc(tmp_path):
    pendulum = pytest.importorskip("pendulum")
    cfg = first(settings(tmp_path), {}, interval_end=pendulum.datetime(2024, 3, 1, 3,
                                                                       tz="Europe/Paris"))
    assert cfg.window_end == "2024-03-01T02:00:00+00:00"


def test_window_days_zero_or_missing_is_the_settings_default(tmp_path):
    s = settings(tmp_path, train_window_days=21)
    assert first(s, {"window_days": 0}).window_days == 21
    assert first(s, {"window_days": "0"}).window_days == 21
    assert first(s, {}).window_days == 21
    assert first(s, {"window_days": 7}).window_days == 7
    assert first(s, {"window_days": "7"}).window_days == 7


def test_engine_param_or_the_settings_engine(tmp_path):
    s = settings(tmp_path, engine="spark")
    assert first(s, {"engine": ""}).engine == "spark"
    assert first(s, {"engine": "local"}).engine == "local"
    assert first(s, {}, model="sasrec").engine == "local"  # no Spark engine


def test_the_run_folder_is_the_run_id_made_a_folder_name(tmp_path):
    s = settings(tmp_path)
    cfg = first(s, {}, run_id="manual__2024-03-01T02:00:00+00:00")
    assert cfg.run_dir == str(tmp_path / "state" / "offline" / "als"
                              / "manual__2024-03-01T02_00_00_00_00")
    cfg = first(s, {}, model="item2vec", run_id="my run: a/b+c")
    assert Path(cfg.run_dir).name == "my_run_a_b_c"
    assert Path(cfg.run_dir).parent == tmp_path / "state" / "offline" / "item2vec"


def test_the_offline_dir_setting_replaces_state_dir_offline(tmp_path):
    s = settings(tmp_path, offline_dir=tmp_path / "runs")
    assert first(s, {}).run_dir == str(
        tmp_path / "runs" / "als" / "manual__2024-03-01T02_00_00_00_00")


def test_hyperparameters_pass_through(tmp_path):
    cfg = first(settings(tmp_path), {"hyperparameters": {"factors": 16, "iterations": "3"}})
    assert cfg.params == {"factors": 16, "iterations": "3"}
    assert (cfg.hyperparameters().factors, cfg.hyperparameters().iterations) == (16, 3)
    assert first(settings(tmp_path), {"hyperparameters": {}}).params == {}
    assert first(settings(tmp_path), {}).params == {}


def test_later_tasks_reuse_the_first_tasks_config_whatever_the_params_say(tmp_path):
    s = settings(tmp_path)
    params = {"engine": "spark", "window_days": 9, "window_end": "2024-01-10T06:00:00",
              "hyperparameters": {"factors": 16}}
    cfg = first(s, params)
    # What `extract` hands on, through XCom (JSON).
    state = {"extract_dir": "x", "config": json.loads(json.dumps(dag_steps.config_state(cfg)))}
    other = {"engine": "local", "window_days": 3, "window_end": "2025-01-01T00:00:00",
             "hyperparameters": {"factors": 64}}

    later = dag_steps.run_config(s, "als", other, "another run", datetime(2030, 1, 1, tzinfo=UTC),
                                 state, now=datetime(2031, 1, 1, tzinfo=UTC))

    assert later == cfg
    assert (later.run_dir, later.engine, later.window_days, later.window_end, later.params) == (
        str(tmp_path / "state" / "offline" / "als" / "manual__2024-03-01T02_00_00_00_00"),
        "spark", 9, "2024-01-10T06:00:00+00:00", {"factors": 16})


def test_a_later_task_keeps_the_window_even_when_the_default_changes(tmp_path):
    cfg = first(settings(tmp_path, train_window_days=30), {})
    state = {"config": dag_steps.config_state(cfg)}
    later = dag_steps.run_config(settings(tmp_path, train_window_days=5), "als", {}, RUN_ID,
                                 None, state, now=NOW)
    assert later.window_days == 30 and later.window_end == cfg.window_end


def test_hyperparameters_the_cast_would_change_are_refused_with_the_field(tmp_path):
    """{"factors": 64.9} trained 64 factors and logged 64 to MLflow, the 0.9 silently gone."""
    cfg = first(settings(tmp_path), {"hyperparameters": {"factors": 64.0, "iterations": "1e1",
                                                         "alpha": "2", "regularization": 3}})
    hp = cfg.hyperparameters()
    assert (hp.factors, hp.iterations, hp.alpha, hp.regularization) == (64, 10, 2.0, 3.0)
    assert isinstance(hp.factors, int) and isinstance(hp.regularization, float)
    for value, reason in ((64.9, "64.9 is not a whole number"),
                          ("64.9", "'64.9' is not a whole number"),
                          ("many", "'many' is not a number"), (True, "True is not a number"),
                          ([64], r"\[64\] is not a number"),
                          ("²", "'²' is not a number"), ("+-5", "'\\+-5' is not a number")):
        with pytest.raises(ValueError, match=f"^als parameter 'factors': {reason}$"):
            first(settings(tmp_path), {"hyperparameters": {"factors": value}})
    with pytest.raises(ValueError, match="^als parameter 'regularization': an integer of 401 "
                                         "digits is too large for a float$"):
        first(settings(tmp_path), {"hyperparameters": {"regularization": 10**400}})


def test_a_window_end_in_the_future_is_refused_naming_the_param(tmp_path):
    """A typo (2052 for 2025) trained a champion "up to" 2052: the gate then refused every
    scheduled run as a backfill, its window ending before the champion's, until 2052."""
    with pytest.raises(BadRunInput, match=r"^window_end '2052-01-10T06:00:00\+00:00' is in the "
                                          r"future \(now 2024-03-05 12:30 UTC\): its model would "
                                          "outrank every scheduled run until then$"):
        first(settings(tmp_path), {"window_end": "2052-01-10T06:00:00+00:00"})
    assert first(settings(tmp_path), {"window_end": NOW.isoformat()}).window_end == \
        NOW.isoformat()
    with pytest.raises(BadRunInput, match=r"^window_end 'last tuesday' is not an ISO 8601 "
                                          r"date-time \(e.g. 2026-01-31T00:00:00\+00:00\)$"):
        first(settings(tmp_path), {"window_end": "last tuesday"})


def test_bad_params_are_a_bad_run_input(tmp_path):
    with pytest.raises(BadRunInput, match="^sasrec has no Spark engine: use engine 'local'$"):
        first(settings(tmp_path), {"engine": "spark"}, model="sasrec")
    with pytest.raises(BadRunInput, match=r"^unknown als parameters: \['heads'\]$"):
        first(settings(tmp_path), {"hyperparameters": {"heads": 2}})


def context(params: dict, run_type: str = "manual",
            logical_date: datetime | None = INTERVAL_END) -> dict:
    """What a task's Airflow context holds that the steps read."""
    dag_run = SimpleNamespace(dag_id="als_weekly", run_id=RUN_ID, logical_date=logical_date,
                              run_type=DagRunType(run_type))
    return {"params": params, "run_id": RUN_ID, "data_interval_end": INTERVAL_END,
            "dag_run": dag_run}


def test_deterministic_failures_fail_the_task_without_retries(tmp_path, monkeypatch):
    """A bad param, a window without events or a model without the engine was retried twice,
    2 minutes apart, failing alike each time."""
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("RECO_STATE_DIR", str(tmp_path))
    with pytest.raises(AirflowFailException, match="^window_end '2052-01-01T00:00:00Z' is in "
                                                   "the future"):
        dag_steps.extract("als", context({"window_end": "2052-01-01T00:00:00Z"}))
    with pytest.raises(AirflowFailException, match="^sasrec has no Spark engine"):
        dag_steps.extract("sasrec", context({"engine": "spark"}))
    with pytest.raises(AirflowFailException, match="^no training events between"), \
            dag_steps.failing_without_retry():
        raise BadRunInput("no training events between a and b")
    # A server down is worth the retries.
    with pytest.raises(ConnectionError), dag_steps.failing_without_retry():
        raise ConnectionError("PostgreSQL is down")


def test_mlflow_runs_are_tagged_with_their_airflow_run_and_later_tasks_keep_the_tags(tmp_path):
    tags = dag_steps.airflow_tags(context({}, run_type="backfill"))
    assert tags == {"airflow.dag_id": "als_weekly", "airflow.run_id": RUN_ID,
                    "airflow.run_type": "backfill",
                    "airflow.logical_date": "2024-03-01T02:00:00+00:00"}
    assert dag_steps.airflow_tags(context({}, logical_date=None))["airflow.logical_date"] == ""
    cfg = dag_steps.run_config(settings(tmp_path), "als", {}, RUN_ID, INTERVAL_END, None,
                               now=NOW, run_tags=tags)
    state = {"config": json.loads(json.dumps(dag_steps.config_state(cfg)))}
    later = dag_steps.run_config(settings(tmp_path), "als", {}, RUN_ID, None, state)
    assert later.run_tags == tags
    # Named by the window it trained on, not the wall clock.
    assert pipeline.run_name(later) == "als-local-20240131T0200-20240301T0200"
