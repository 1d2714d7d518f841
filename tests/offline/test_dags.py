"""The DAG files parse cleanly, and each DAG runs end to end under `airflow dags test`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from reco import keys, neighbours
from reco.settings import Settings
from reco.stack import servers as stack_servers
from spark_jobs import RUN_PARAMS, tracking
from tests import servers
from tests.offline import synthetic

DAGS = {"item2vec_daily": "item2vec", "als_weekly": "als", "sasrec_daily": "sasrec"}
OTHER_DAGS = ("serve_champions", "maintenance")
# Small but learnable hyperparameters per model (see test_models.py).
HYPERPARAMETERS = {
    "item2vec": {"vector_size": 32, "epochs": 30, "window": 3, "sample": 0.0},
    "als": {"factors": 16, "iterations": 15},
    "sasrec": {"dim": 32, "blocks": 1, "epochs": 20, "max_len": 20, "dropout": 0.2,
               "learning_rate": 0.01},
}
# The key of one list each model publishes, and how many of its first n items should be of
# u1's / item 3's group (SASRec's head continues u1's walk; its tail spreads out).
LIST_KEY = {"item2vec": lambda v: keys.item_knn(synthetic.item_id(1, 3), v),
            "als": lambda v: keys.user_cf("u1", v), "sasrec": lambda v: keys.user_seq("u1", v)}
IN_GROUP = {"item2vec": (10, 7), "als": (10, 7), "sasrec": (3, 3)}
DAGS_FOLDER = stack_servers.REPO_ROOT / "dags"


@pytest.fixture(scope="session")
def airflow_env(postgres_server, _migrated_database, tmp_path_factory) -> dict[str, str]:
    """Environment of an Airflow home on the fixture PostgreSQL `airflow` database, migrated."""
    home = tmp_path_factory.mktemp("airflow-home")
    port = postgres_server.port
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://reco:reco@127.0.0.1:{port}/airflow",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:1/execution/",
        # The tasks import this checkout's packages (the venv's editable install may be
        # another checkout's).
        "PYTHONPATH": os.pathsep.join(filter(None, (str(stack_servers.REPO_ROOT),
                                                    os.environ.get("PYTHONPATH")))),
    }
    result = subprocess.run([stack_servers.venv_bin("airflow"), "db", "migrate"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return env


@pytest.mark.airflow
def test_dag_files_import_cleanly_with_tags_retries_and_params(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.timetables.base import TimeRestriction

    bag = DagBag(dag_folder=str(DAGS_FOLDER))

    assert bag.import_errors == {}
    assert set(bag.dags) == {*DAGS, *OTHER_DAGS}
    serve = bag.dags["serve_champions"]
    assert serve.timetable.summary == "*/5 * * * *" and serve.max_active_runs == 1
    assert serve.is_paused_upon_creation is False and serve.catchup is False
    assert [t.task_id for t in serve.tasks] == ["serve"]
    maintenance = bag.dags["maintenance"]
    assert maintenance.timetable.summary == "0 4 * * *" and maintenance.catchup is False
    assert maintenance.is_paused_upon_creation is False
    assert sorted(t.task_id for t in maintenance.tasks) == [
        "mirror_catalogue", "prune_airflow_logs", "prune_events"]
    for t in maintenance.tasks:  # independent: one failing must not stop the other
        assert not t.upstream_task_ids and t.retries >= 1
    # Daily at 02:00 and 02:30, weekly on Sunday 03:00 UTC; unpausing never starts a past slot.
    assert bag.dags["item2vec_daily"].timetable.summary == "0 2 * * *"
    assert bag.dags["sasrec_daily"].timetable.summary == "30 2 * * *"
    assert bag.dags["als_weekly"].timetable.summary == "0 3 * * 0"
    for dag in (bag.dags[dag_id] for dag_id in DAGS):
        assert dag.timetable.serialize()["run_immediately"] == 0.0
        # The first run is the next slot, never the one that just passed.
        first = dag.timetable.next_dagrun_info(last_automated_data_interval=None,
                                               restriction=TimeRestriction(None, None, False))
        assert first is not None and first.run_after > datetime.now(UTC)
    for dag_id, model in DAGS.items():
        dag = bag.dags[dag_id]
        assert {"reco", "training", model} <= set(dag.tags)
        assert dag.catchup is False
        assert dag.is_paused_upon_creation is False  # scheduled retraining needs no unpausing
        assert [t.task_id for t in dag.topological_sort()] == [
            "extract", "train", "evaluate", "gate", "publish"]
        for t in dag.tasks:
            assert t.retries >= 1 and t.retry_delay.total_seconds() > 0
            assert t.execution_timeout is not None
        assert tuple(dag.params) == RUN_PARAMS  # what dag_steps.check_conf accepts


def trigger_params(bag, dag_id: str, conf: dict) -> dict:
    """The params of a run triggered with `conf`, validated as Airflow validates them when a
    run is created (UI, REST API, CLI, backfill); ParamValidationError when refused."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[dag_id]))
    return dag.params.deep_merge(conf).validate()


@pytest.mark.airflow
def test_params_are_refused_at_trigger_time_naming_the_param(monkeypatch, tmp_path):
    """`window_end` was any string and `hyperparameters` any object: a typo in either, and
    sasrec's `spark` engine, failed the run's first task (after two retries) instead."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.exceptions import ParamValidationError

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    refused = [
        ("sasrec_daily", {"engine": "spark"}, "engine", "'spark' is not one of ['', 'local']"),
        ("als_weekly", {"window_end": "2024-01-10"}, "window_end", "'2024-01-10' does not match"),
        ("als_weekly", {"window_end": "10/01/2024"}, "window_end", "does not match"),
        ("als_weekly", {"hyperparameters": {"factor": 64}}, "hyperparameters",
         "Additional properties are not allowed ('factor' was unexpected)"),
        ("als_weekly", {"hyperparameters": {"factors": 64.5}}, "hyperparameters",
         "64.5 is not of type 'integer'"),
        ("item2vec_daily", {"hyperparameters": {"sample": "1e-4"}}, "hyperparameters",
         "'1e-4' is not of type 'number'"),
        ("sasrec_daily", {"hyperparameters": {"dim": True}}, "hyperparameters",
         "True is not of type 'integer'"),
        ("als_weekly", {"hyperparameters": {"factors": 0}}, "hyperparameters",
         "0 is less than the minimum of 1"),
        ("als_weekly", {"promote": "yes"}, "promote", "'yes' is not one of"),
    ]
    for dag_id, conf, param, reason in refused:
        with pytest.raises(ParamValidationError) as error:
            trigger_params(bag, dag_id, conf)
        assert str(error.value).startswith(f"Invalid input for param {param}: "), error.value
        assert reason in str(error.value), error.value
    params = trigger_params(bag, "als_weekly", {
        "engine": "spark", "window_end": "2024-01-10T06:00:00Z",
        "hyperparameters": {"factors": 64, "alpha": 2, "regularization": 0.5}})
    assert params["window_end"] == "2024-01-10T06:00:00Z"
    assert trigger_params(bag, "sasrec_daily", {})["window_end"] is None
    assert trigger_params(bag, "sasrec_daily", {"window_end": ""})["window_end"] == ""


def test_the_dags_declare_each_models_hyperparameters_with_their_types():
    from spark_jobs.als import ALSParams
    from spark_jobs.item2vec import Item2VecParams
    from spark_jobs.sasrec import SASRecParams
    from spark_jobs.training_dag import HYPERPARAMETERS

    for model, cls in (("item2vec", Item2VecParams), ("als", ALSParams),
                       ("sasrec", SASRecParams)):
        fields = dataclasses.fields(cls)
        assert HYPERPARAMETERS[model] == {
            f.name: {int: "integer", float: "number"}[type(f.default)] for f in fields}


@pytest.mark.airflow
@pytest.mark.integration
def test_dags_are_unpaused_when_airflow_first_stores_them(airflow_env):
    """Airflow 3 stores new DAGs paused unless they say otherwise, and a paused DAG never
    runs on its schedule: retraining would wait for someone to unpause it."""
    airflow = stack_servers.venv_bin("airflow")
    stored = subprocess.run([airflow, "dags", "reserialize"], env=airflow_env,
                            capture_output=True, text=True, timeout=300)
    assert stored.returncode == 0, stored.stdout[-3000:] + stored.stderr[-3000:]

    listed = subprocess.run([airflow, "dags", "list", "-o", "json"], env=airflow_env,
                            capture_output=True, text=True, timeout=300)

    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = json.loads(listed.stdout.splitlines()[-1])  # after Airflow's log lines
    assert {row["dag_id"]: row["is_paused"] for row in rows} == dict.fromkeys(
        [*DAGS, *OTHER_DAGS], "False")


@pytest.mark.airflow
@pytest.mark.integration
def test_reco_airflow_runs_the_cli_on_the_stacks_database(airflow_env, postgres_server,
                                                          tmp_path):
    """The README's `airflow dags ...` failed on the local stack: Airflow's default home
    meant SQLite ("Database migration required") and a stray ~/airflow, while the stack's
    database, DAG folder and PYTHONPATH were only in `airflow_env`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "RECO_")) and k != "PYTHONPATH"}
    env |= {"HOME": str(tmp_path), "RECO_STATE_DIR": str(tmp_path / "state"),
            "RECO_PG_PORT": str(postgres_server.port)}

    def reco_airflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reco.cli", "airflow", *args], env=env,
                              cwd=stack_servers.REPO_ROOT, capture_output=True, text=True,
                              timeout=300)

    stored = reco_airflow("dags", "reserialize")  # the airflow_env fixture migrated the db
    listed = reco_airflow("dags", "list", "-o", "json")
    conn = reco_airflow("config", "get-value", "database", "sql_alchemy_conn")
    unknown = reco_airflow("dags", "no-such-command")

    assert stored.returncode == 0, stored.stdout[-3000:] + stored.stderr[-3000:]
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = json.loads(listed.stdout.splitlines()[-1])  # after Airflow's log lines
    assert {row["dag_id"] for row in rows} == {*DAGS, *OTHER_DAGS}
    stack = Settings(pg_port=postgres_server.port)
    assert conn.stdout.splitlines()[-1] == stack.pg_url(stack.pg_airflow_database,
                                                        driver="postgresql+psycopg2")
    assert unknown.returncode == 2, unknown.stderr[-3000:]  # Airflow's own exit status
    assert not (tmp_path / "airflow").exists()  # nothing under ~/airflow
    assert (tmp_path / "state" / "airflow" / "airflow.cfg").exists()


@pytest.mark.airflow
@pytest.mark.spark
@pytest.mark.integration
@pytest.mark.parametrize("dag_id", list(DAGS))
def test_dag_runs_end_to_end(dag_id, airflow_env, offline_settings, small_events, redis_client,
                             pg, tmp_path):
    model = DAGS[dag_id]
    s = offline_settings
    env = {
        **airflow_env,
        "RECO_PG_PORT": str(s.pg_port), "RECO_REDIS_URL": s.redis_url,
        "RECO_MLFLOW_TRACKING_URI": s.mlflow_tracking_uri, "RECO_STATE_DIR": str(tmp_path),
        "RECO_SPARK_JARS_DIR": str(servers.JARS_DIR), "RECO_JDBC_PARTITIONS": "2",
        "RECO_SPARK_DRIVER_MEMORY": "1g", "RECO_ENGINE": "local",
    }
    # Small hyperparameters make an experiment, which only promote 'gate' lets the gate promote.
    conf = {"window_end": small_events["end"].isoformat(), "window_days": 30,
            "hyperparameters": HYPERPARAMETERS[model], "promote": "gate"}

    result = subprocess.run(
        [stack_servers.venv_bin("airflow"), "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=600)

    output = result.stdout[-4000:] + result.stderr[-4000:]
    (tmp_path / "dags-test.log").write_text(result.stdout + result.stderr)  # for debugging
    assert result.returncode == 0, output
    version = redis_client.hget(keys.MODEL_VERSIONS, model)
    assert version, output
    assert redis_client.hget(keys.MODEL_PUBLISHED_AT, model)
    ids, _ = neighbours.decode(redis_client.get(LIST_KEY[model](version)))
    head, at_least = IN_GROUP[model]
    assert len(ids) > 0 and sum(i.startswith("g1-") for i in ids[:head]) >= at_least, ids[:10]
    runs = tracking.client(s.mlflow_tracking_uri).search_runs(
        [tracking.client(s.mlflow_tracking_uri).get_experiment_by_name(
            tracking.EXPERIMENTS[model]).experiment_id],
        filter_string=f"tags.publish_version = '{version}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # Linked to its Airflow run, named by its window, its registry version tagged serving.
    tags = runs[0].data.tags
    assert (tags["airflow.dag_id"], tags["airflow.run_type"]) == (dag_id, "manual")
    assert tags["airflow.run_id"].startswith("manual__")
    end = small_events["end"]
    assert runs[0].info.run_name.endswith(f"-{end:%Y%m%dT%H%M}")
    champion = tracking.champion_version(s.mlflow_tracking_uri, model)
    assert champion.run_id == runs[0].info.run_id
    assert champion.tags[tracking.SERVING_TAG] == "true" and champion.tags["gate"] == "accepted"
    assert runs[0].data.metrics["model.hr_at_10"] > runs[0].data.metrics["popularity.hr_at_10"]
    assert pg.execute("SELECT status FROM models WHERE name = %s AND version = %s",
                      (model, version)).fetchone() == ("published",)


@pytest.mark.airflow
@pytest.mark.integration
def test_the_serve_champions_dag_serves_a_rollback_made_in_mlflow(
        airflow_env, offline_settings, pg, redis_client, tmp_path):
    from spark_jobs import pipeline
    from tests.offline.test_pipeline_steps import accepted, tiny_als

    s = offline_settings
    cfg = pipeline.config_from_settings(s, "als", run_dir=tmp_path / "run")
    uri = s.mlflow_tracking_uri
    for version in ("v1", "v2"):
        pipeline.publish_step(cfg, accepted(uri, version, tiny_als(tmp_path / version)))
    tracking.set_champion(uri, "als", "1")
    env = {**airflow_env, "RECO_PG_PORT": str(s.pg_port), "RECO_REDIS_URL": s.redis_url,
           "RECO_MLFLOW_TRACKING_URI": uri, "RECO_STATE_DIR": str(tmp_path)}

    result = subprocess.run([stack_servers.venv_bin("airflow"), "dags", "test", "serve_champions"],
                            env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert redis_client.hget(keys.MODEL_VERSIONS, "als") == "v1"
    assert redis_client.exists(keys.user_cf("u1", "v1"))


@pytest.mark.airflow
@pytest.mark.integration
def test_the_maintenance_dag_deletes_events_past_their_retention(airflow_env, settings, pg,
                                                                  redis_client):
    """It also mirrors the catalogue items PostgreSQL holds and Redis lacks (an ingest API
    stopped while Redis refused its writes)."""
    old, recent = datetime.now(UTC) - timedelta(days=400), datetime.now(UTC)
    for user, at in (("old", old), ("recent", recent)):
        pg.execute("INSERT INTO events (event_id, user_id, item_id, event_type, event_time) "
                   "VALUES (gen_random_uuid(), %s, 'i1', 'view', %s)", (user, at))
    pg.execute("INSERT INTO items (item_id, category, in_stock) VALUES ('unmirrored', 'c1', "
               "false)")
    env = {**airflow_env, "RECO_PG_PORT": str(settings.pg_port),
           "RECO_REDIS_URL": settings.redis_url, "RECO_EVENTS_RETENTION_DAYS": "365"}

    result = subprocess.run([stack_servers.venv_bin("airflow"), "dags", "test", "maintenance"],
                            env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert pg.execute("SELECT user_id FROM events").fetchall() == [("recent",)]
    meta = redis_client.hgetall(keys.item_meta("unmirrored"))
    assert (meta["category"], meta["in_stock"]) == ("c1", "0")
    assert redis_client.smembers(keys.ITEM_IDS) == {"unmirrored", keys.ITEM_IDS_COMPLETE}


def write_log(path: Path, days_ago: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("log line\n")
    at = (datetime.now(UTC) - timedelta(days=days_ago)).timestamp()
    os.utime(path, (at, at))
    return path


@pytest.mark.airflow
@pytest.mark.integration
def test_the_maintenance_dag_deletes_airflow_task_logs_past_the_history(airflow_env, settings,
                                                                        pg, redis_client,
                                                                        tmp_path):
    logs = tmp_path / "airflow-logs"
    run = logs / "dag_id=serve_champions" / "run_id=scheduled__{}" / "task_id=serve"
    old = write_log(Path(str(run).format("old")) / "attempt=1.log", 31)
    new = write_log(Path(str(run).format("new")) / "attempt=1.log", 29)
    env = {**airflow_env, "RECO_PG_PORT": str(settings.pg_port),
           "RECO_REDIS_URL": settings.redis_url,
           "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs)}  # the default horizon: 30 days

    result = subprocess.run([stack_servers.venv_bin("airflow"), "dags", "test", "maintenance"],
                            env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not old.exists() and not old.parent.parent.exists()  # the run's folder too
    assert new.exists()

    # 0 keeps every log file.
    old = write_log(old, 4000)
    result = subprocess.run([stack_servers.venv_bin("airflow"), "dags", "test", "maintenance"],
                            env={**env, "RECO_AIRFLOW_HISTORY_DAYS": "0"}, capture_output=True,
                            text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert old.exists() and new.exists()


def airflow_rows(conn: psycopg.Connection, run_id: str) -> dict[str, int]:
    """Rows Airflow keeps about one dag run, per table."""
    return {table: conn.execute(f"SELECT count(*) FROM {table} WHERE run_id = %s",
                                (run_id,)).fetchone()[0]
            for table in ("dag_run", "task_instance", "xcom", "log")}


@pytest.mark.airflow
@pytest.mark.integration
def test_reco_db_prune_airflow_deletes_airflow_history_past_the_horizon(
        airflow_env, settings, pg, redis_client, tmp_path):
    """Metadata rows (dag runs, task instances, XComs, audit log) and log files older than
    RECO_AIRFLOW_HISTORY_DAYS go, newer ones stay; 0 keeps all. Two real maintenance runs,
    one made 40 days old."""
    airflow = stack_servers.venv_bin("airflow")
    env = {**airflow_env, "RECO_PG_PORT": str(settings.pg_port),
           "RECO_REDIS_URL": settings.redis_url}
    airflow_db = Settings(pg_port=settings.pg_port).pg_url("airflow")
    run_ids = []
    for _ in range(2):
        result = subprocess.run([airflow, "dags", "test", "maintenance"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with psycopg.connect(airflow_db) as conn:
            run_ids.append(conn.execute("SELECT run_id FROM dag_run WHERE dag_id = 'maintenance' "
                                        "ORDER BY id DESC LIMIT 1").fetchone()[0])
    old_run, new_run = run_ids
    state = tmp_path / "state"
    stack_logs = state / "airflow" / "logs" / "dag_id=maintenance"
    old_log = write_log(stack_logs / f"run_id={old_run}" / "attempt=1.log", 40)
    new_log = write_log(stack_logs / f"run_id={new_run}" / "attempt=1.log", 1)
    with psycopg.connect(airflow_db, autocommit=True) as conn:
        assert all(airflow_rows(conn, old_run).values()), airflow_rows(conn, old_run)
        for table, column in (("dag_run", "start_date"), ("task_instance", "start_date"),
                              ("xcom", "timestamp"), ("log", "dttm")):
            conn.execute(f"UPDATE {table} SET {column} = {column} - interval '40 days' "
                         "WHERE run_id = %s", (old_run,))
        cli_env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AIRFLOW", "RECO_")) and k != "PYTHONPATH"}
        cli_env |= {"HOME": str(tmp_path), "RECO_STATE_DIR": str(state),
                    "RECO_PG_PORT": str(settings.pg_port)}

        def prune(**more: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "reco.cli", "db", "prune-airflow"],
                                  env=cli_env | more, cwd=stack_servers.REPO_ROOT,
                                  capture_output=True, text=True, timeout=600)

        kept = prune(RECO_AIRFLOW_HISTORY_DAYS="0")

        assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
        assert "RECO_AIRFLOW_HISTORY_DAYS is 0" in kept.stdout
        assert all(airflow_rows(conn, old_run).values()) and old_log.exists()

        pruned = prune()  # the default: 30 days

        assert pruned.returncode == 0, pruned.stdout[-3000:] + pruned.stderr[-3000:]
        assert "1 log files" in pruned.stdout, pruned.stdout
        assert airflow_rows(conn, old_run) == dict.fromkeys(airflow_rows(conn, old_run), 0)
        assert all(airflow_rows(conn, new_run).values()), airflow_rows(conn, new_run)
        assert not old_log.exists() and new_log.exists()
        # No archive tables left behind (--skip-archive).
        assert conn.execute("SELECT count(*) FROM pg_tables "
                            "WHERE tablename LIKE '\\_airflow\\_deleted\\_\\_%'").fetchone() == (0,)


@pytest.mark.airflow
@pytest.mark.integration
def test_a_task_cannot_run_airflow_db_clean(airflow_env):
    """Why the metadata is not cleaned by the maintenance DAG: Airflow 3's Task SDK replaces
    the task process's database URL before running task code (`block_orm_access`, which
    `airflow dags test` skips: it runs tasks in-process), and a child `airflow db clean`
    inherits it. If this starts passing, a task could do it."""
    code = ("import subprocess, sys, airflow.settings\n"
            "from airflow.sdk.execution_time.supervisor import block_orm_access\n"
            "block_orm_access()\n"
            "sys.exit(subprocess.run([sys.argv[1], 'db', 'clean', '--clean-before-timestamp',"
            " '2000-01-01', '--yes', '--skip-archive']).returncode)\n")

    result = subprocess.run([sys.executable, "-c", code, stack_servers.venv_bin("airflow")],
                            env=airflow_env, capture_output=True, text=True, timeout=300)

    assert result.returncode != 0
    assert "Could not parse SQLAlchemy URL" in result.stderr, result.stderr[-3000:]
