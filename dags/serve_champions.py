"""Airflow DAG, every 5 minutes: Redis serves each model's `champion` alias in MLflow.

A champion promoted or rolled back by hand in the MLflow UI is served by the next run (within
5 minutes, plus the publish itself); a run where every champion serves already reads the
registry and Redis and changes nothing. Trigger it by hand to serve a change at once.
"""

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from spark_jobs import MODELS


@dag(
    dag_id="serve_champions",
    description="Serve each model's MLflow champion alias from Redis (follows promotions and "
                "rollbacks by hand)",
    schedule=CronTriggerTimetable("*/5 * * * *", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    # Running from the start: a rollback in MLflow must not wait for someone to unpause this.
    is_paused_upon_creation=False,
    tags=["reco", "serving"],
    # No retries: the next run, 5 minutes later, is the retry.
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=30)},
    doc_md=__doc__,
)
def serve_champions():
    # One task for every model: a task is a process importing MLflow, 288 runs a day.
    @task
    def serve() -> dict:
        from spark_jobs import dag_steps

        return dag_steps.serve_champions(MODELS)

    serve()


serve_champions()
