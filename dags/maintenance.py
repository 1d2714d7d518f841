"""Airflow DAG, daily at 04:00 UTC: delete the PostgreSQL events older than
RECO_EVENTS_RETENTION_DAYS (0, the default, keeps every event; `reco db prune-events` does the
same by hand), and Airflow's task log files older than RECO_AIRFLOW_HISTORY_DAYS (30; 0 keeps
them); and copy into Redis the catalogue items PostgreSQL holds newer than Redis (an ingest API
stopped while Redis refused its writes; `reco db mirror-items` by hand). Airflow's metadata rows
are cleaned by `reco db prune-airflow`, outside any task: Airflow 3 gives task code no access to
its database (reco/airflow_history.py)."""

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable


@dag(
    dag_id="maintenance",
    description="Housekeeping: events past their retention, old Airflow task logs, the "
                "catalogue's Redis mirror",
    schedule=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # retention set in the settings must not wait for a click
    tags=["reco", "maintenance"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(hours=6)},
    doc_md=__doc__,
)
def maintenance():
    @task
    def prune_events() -> int:
        from reco.events_retention import prune_events
        from reco.settings import Settings

        return prune_events(Settings()).deleted

    @task
    def prune_airflow_logs() -> int:
        from pathlib import Path

        from airflow.sdk.configuration import conf

        from reco.airflow_history import prune_task_logs
        from reco.settings import Settings

        # The folder this worker writes task logs to, as Airflow is configured here.
        folder = Path(conf.get("logging", "base_log_folder"))
        return prune_task_logs(folder, Settings().airflow_history_days).files

    @task
    def mirror_catalogue() -> int:
        from reco.settings import Settings
        from serving.catalogue_mirror import mirror_catalogue_of

        return mirror_catalogue_of(Settings()).written

    prune_events()
    prune_airflow_logs()
    mirror_catalogue()


maintenance()
