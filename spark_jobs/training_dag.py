"""The one shape of every training DAG: extract -> train -> evaluate -> gate -> publish.

DAG files call `training_dag` with what differs (model, schedule, docs); each task imports
`spark_jobs.dag_steps` inside its body, so parsing a DAG file does no work and no heavy imports.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=2),
                "execution_timeout": timedelta(minutes=60)}


def training_dag(model: str, dag_id: str, cron: str, description: str, engines_doc: str,
                 hyperparameters_doc: str, doc_md: str) -> DAG:
    @dag(
        dag_id=dag_id,
        description=description,
        # No start_date and a zero run_immediately: unpausing a DAG waits for the next slot
        # instead of starting a run for the slot that just passed (which would train on a
        # window cut at that slot, publish it, and delay the runs someone triggers by hand).
        # Not run_immediately=False: Airflow 3 treats False like None and still runs the
        # past slot when it is less than a tenth of the schedule old (seen in `make demo`).
        schedule=CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0)),
        catchup=False,
        # Airflow creates DAGs paused by default, and a paused DAG never runs on its schedule:
        # scheduled retraining would wait for someone to unpause it in the UI.
        is_paused_upon_creation=False,
        max_active_runs=1,
        tags=["reco", "training", model],
        default_args=DEFAULT_ARGS,
        params={
            "engine": Param("", type="string", enum=["", "local", "spark"],
                            description=f"'' = RECO_ENGINE; {engines_doc}"),
            "window_days": Param(0, type="integer", minimum=0,
                                 description="days of events to train on; "
                                             "0 = RECO_TRAIN_WINDOW_DAYS"),
            "window_end": Param("", type="string",
                                description="ISO 8601 end of the window; '' = the run's "
                                            "interval end"),
            "hyperparameters": Param({}, type="object", description=hyperparameters_doc),
        },
        doc_md=doc_md,
    )
    def training():
        @task
        def extract() -> dict:
            from spark_jobs import dag_steps

            return dag_steps.extract(model)

        @task
        def train(state: dict) -> dict:
            from spark_jobs import dag_steps

            return dag_steps.step("train", model, state)

        @task
        def evaluate(state: dict) -> dict:
            from spark_jobs import dag_steps

            return dag_steps.step("evaluate", model, state)

        @task
        def gate(state: dict) -> dict:
            from spark_jobs import dag_steps

            return dag_steps.step("gate", model, state)

        @task
        def publish(state: dict) -> dict:
            from spark_jobs import dag_steps

            return dag_steps.step("publish", model, state)

        publish(gate(evaluate(train(extract()))))

    return training()
