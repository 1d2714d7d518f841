"""What an Airflow task turns its run's params, run id and interval end into (no Airflow)."""

from __future__ import annotations

import dataclasses
import json
import re
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
                                          r"date or date-time \(e.g. 2026-01-31 or "
                                          r"2026-01-31T00:00:00\+00:00\)$"):
        first(settings(tmp_path), {"window_end": "last tuesday"})


def test_bad_params_are_a_bad_run_input(tmp_path):
    with pytest.raises(BadRunInput, match="^sasrec has no Spark engine: use engine 'local'$"):
        first(settings(tmp_path), {"engine": "spark"}, model="sasrec")
    with pytest.raises(BadRunInput, match=r"^unknown als parameters: \['heads'\]$"):
        first(settings(tmp_path), {"hyperparameters": {"heads": 2}})


def context(params: dict, run_type: str = "manual",
            logical_date: datetime | None = INTERVAL_END, conf: dict | None = None) -> dict:
    """What a task's Airflow context holds that the steps read (Airflow merges the run conf
    into the params, unknown keys too)."""
    dag_run = SimpleNamespace(dag_id="als_weekly", run_id=RUN_ID, logical_date=logical_date,
                              run_type=DagRunType(run_type), conf=conf or {})
    params = {**params, **(conf or {})}
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


def test_a_run_conf_key_that_is_not_a_param_is_refused_naming_it(tmp_path, monkeypatch):
    """{"windowdays": 3} on als_weekly trained on the defaults (and was promoted)."""
    from airflow.sdk.exceptions import AirflowFailException

    accepted = "the accepted keys are engine, window_days, window_end, hyperparameters, promote"
    with pytest.raises(BadRunInput, match=r"^unknown run conf keys: 'windowdays' \(did you "
                                          rf"mean 'window_days'\?\); {accepted}$"):
        dag_steps.check_conf({"windowdays": 3, "hyperparameters": {}})
    with pytest.raises(BadRunInput, match=rf"^unknown run conf keys: 'a', 'b'; {accepted}$"):
        dag_steps.check_conf({"b": 1, "a": 2})
    dag_steps.check_conf({"engine": "", "window_days": 3, "window_end": None,
                          "hyperparameters": {}, "promote": "gate"})
    dag_steps.check_conf(None)  # a scheduled run has no conf
    # The first task fails at once, before any work.
    monkeypatch.setenv("RECO_STATE_DIR", str(tmp_path))
    with pytest.raises(AirflowFailException, match="^unknown run conf keys: 'windowdays'"):
        dag_steps.extract("als", context({}, conf={"windowdays": 3}))
    assert not (tmp_path / "offline").exists()


def test_manual_experiments_are_held_from_promotion_unless_promote_says_gate(tmp_path):
    """The README's own example (window_days 60, factors 64) was promoted on its lift and
    served within 90 s, with lists for 580 fewer users than the champion."""
    s = settings(tmp_path)
    experiment = {"window_days": 60, "hyperparameters": {"factors": 64}}
    held = first(s, experiment)
    assert held.hold == ("an experiment (window_days, hyperparameters overridden) with promote "
                         "'auto': experiments are registered, not promoted")
    assert first(s, {**experiment, "promote": "auto"}).hold == held.hold
    assert first(s, {**experiment, "promote": "gate"}).hold == ""
    assert first(s, {"engine": "spark"}).hold.startswith("an experiment (engine overridden)")
    # What the schedule trains, however spelt, is no experiment.
    for params in ({}, {"engine": "", "window_days": 0, "window_end": "", "hyperparameters": {},
                        "promote": "auto"},
                   {"engine": "local", "window_days": 30, "hyperparameters": {"factors": 128}},
                   {"window_end": "2024-01-10T06:00:00+00:00"}):
        assert first(s, params).hold == "", params
    assert first(s, {"promote": "never"}).hold == "the run's promote param is 'never'"
    assert first(s, {**experiment, "promote": "never"}).hold == \
        "the run's promote param is 'never'"
    with pytest.raises(BadRunInput, match=r"^promote 'maybe' is not one of \['auto', 'gate', "
                                          r"'never'\]$"):
        first(s, {"promote": "maybe"})
    # Later tasks keep it, whatever the params say now.
    state = {"config": json.loads(json.dumps(dag_steps.config_state(held)))}
    later = dag_steps.run_config(s, "als", {"promote": "gate"}, RUN_ID, None, state)
    assert (later.hold, later.experiment) == (held.hold, True)


def test_only_an_experiment_is_held_to_the_champions_user_count(tmp_path):
    """A scheduled run's users vary with traffic: held to the champion's count (after a peak
    season, or a champion trained on a longer window), retraining stopped for good."""
    s = settings(tmp_path)
    scheduled = first(s, {})
    experiment = first(s, {"window_days": 60, "promote": "gate"})
    assert (scheduled.experiment, experiment.experiment) == (False, True)
    assert pipeline._coverage_checked(scheduled) == 0.0
    assert pipeline._coverage_checked(experiment) == s.gate_min_user_coverage == 0.9


@pytest.mark.parametrize(("model", "values", "error"), [
    ("als", {"factors": 0}, "als parameter 'factors': 0 is out of range (allowed: >= 1)"),
    ("als", {"factors": 64, "iterations": -1},
     "als parameter 'iterations': -1 is out of range (allowed: >= 1)"),
    ("als", {"regularization": "-0.5"},
     "als parameter 'regularization': -0.5 is out of range (allowed: >= 0)"),
    ("als", {"regularization": "nan"},
     "als parameter 'regularization': nan is out of range (allowed: >= 0)"),
    ("als", {"alpha": 0}, "als parameter 'alpha': 0.0 is out of range (allowed: > 0)"),
    ("als", {"seed": -1}, "als parameter 'seed': -1 is out of range (allowed: >= 0 and "
                          "<= 4294967295)"),
    ("item2vec", {"window": 0}, "item2vec parameter 'window': 0 is out of range (allowed: >= 1)"),
    ("item2vec", {"negative": 0},
     "item2vec parameter 'negative': 0 is out of range (allowed: >= 1)"),
    ("item2vec", {"ns_exponent": "inf"},
     "item2vec parameter 'ns_exponent': inf is out of range (allowed: a finite number)"),
    ("sasrec", {"dropout": 1}, "sasrec parameter 'dropout': 1.0 is out of range (allowed: "
                               ">= 0 and < 1)"),
    ("sasrec", {"learning_rate": 0},
     "sasrec parameter 'learning_rate': 0.0 is out of range (allowed: > 0)"),
    ("sasrec", {"refit_epochs": -1},
     "sasrec parameter 'refit_epochs': -1 is out of range (allowed: >= 0)"),
])
def test_hyperparameters_out_of_range_are_refused_naming_the_range(tmp_path, model, values,
                                                                   error):
    """{"factors": 0, "iterations": -1} trained in 5 ms and made a normal-looking MLflow run."""
    with pytest.raises(BadRunInput, match=f"^{re.escape(error)}$"):
        first(settings(tmp_path), {"hyperparameters": values}, model=model)


def test_the_hyperparameter_dataclasses_check_their_ranges_themselves():
    """`reco train` builds them without the DAG's schema."""
    from spark_jobs.als import ALSParams
    from spark_jobs.hyperparameters import RANGES
    from spark_jobs.item2vec import Item2VecParams
    from spark_jobs.sasrec import SASRecParams

    for cls in (Item2VecParams, ALSParams, SASRecParams):
        assert set(RANGES[cls.MODEL]) == {f.name for f in dataclasses.fields(cls)}
        cls()  # the defaults are in range
    with pytest.raises(ValueError, match=r"^als parameter 'factors': 0 is out of range"):
        ALSParams(factors=0)
    with pytest.raises(ValueError, match=r"^als parameter 'iterations': -1 is out of range"):
        ALSParams.from_dict({"iterations": "-1"})
    assert SASRecParams(dropout=0.0, refit_epochs=0).dropout == 0.0  # the bounds themselves


def test_the_dags_refuse_out_of_range_hyperparameters_at_trigger_time():
    from airflow.exceptions import ParamValidationError
    from airflow.sdk import Param

    from spark_jobs.training_dag import hyperparameter_schema

    assert hyperparameter_schema("als")["factors"] == {"type": "integer", "minimum": 1}
    assert hyperparameter_schema("sasrec")["dropout"] == {
        "type": "number", "minimum": 0, "exclusiveMaximum": 1}
    for model, values, reason in (
            ("als", {"factors": 0}, "0 is less than the minimum of 1"),
            ("als", {"regularization": -1}, "-1 is less than the minimum of 0"),
            ("sasrec", {"dropout": 1}, "1 is greater than or equal to the maximum of 1"),
            ("item2vec", {"alpha": 0}, "0 is less than or equal to the minimum of 0")):
        param = Param({}, type="object", additionalProperties=False,
                      properties=hyperparameter_schema(model))
        with pytest.raises(ParamValidationError, match=re.escape(reason)):
            param.resolve(values)
    assert Param({}, type="object", properties=hyperparameter_schema("als")).resolve(
        {"factors": 1, "regularization": 0}) == {"factors": 1, "regularization": 0}
