"""Airflow DAG, daily at 04:00 UTC: delete the PostgreSQL events older than
RECO_EVENTS_RETENTION_DAYS (0, the default, keeps every event; `reco db prune-events` does the
same by hand)."""

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable


@dag(
    dag_id="maintenance",
    description="Housekeeping: events past their retention",
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

    prune_events()


maintenance()
