"""The one shape of every training DAG: extract -> train -> evaluate -> gate -> publish.

DAG files call `training_dag` with what differs (model, schedule, docs); each task imports
`spark_jobs.dag_steps` inside its body, so parsing a DAG file does no work and no heavy imports.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from spark_jobs import PROMOTE, SPARK_MODELS
from spark_jobs.hyperparameters import RANGES

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=2),
                "execution_timeout": timedelta(minutes=60)}


# Each model's hyperparameters and their JSON types, as the dataclasses declare them
# (spark_jobs.als.ALSParams, ...; a test keeps the two alike): imported here, those modules
# would load numpy and the model libraries at every parse of the DAG files.
HYPERPARAMETERS = {
    "item2vec": {"vector_size": "integer", "window": "integer", "epochs": "integer",
                 "negative": "integer", "ns_exponent": "number", "sample": "number",
                 "min_count": "integer", "alpha": "number", "seed": "integer",
                 "workers": "integer", "neighbours": "integer"},
    "als": {"factors": "integer", "regularization": "number", "iterations": "integer",
            "alpha": "number", "seed": "integer", "threads": "integer",
            "candidates": "integer", "neighbours": "integer"},
    "sasrec": {"dim": "integer", "max_len": "integer", "blocks": "integer", "epochs": "integer",
               "dropout": "number", "learning_rate": "number", "batch": "integer",
               "temperature": "number", "refit_epochs": "integer",
               "refit_learning_rate": "number", "seed": "integer", "candidates": "integer"},
}
# RFC 3339 with its zone, checked at trigger time (jsonschema checks the pattern; its
# "date-time" format, which gives the UI its picker, only with a package Airflow lacks).
# '' too: the param's default before it was null, in confs people keep.
WINDOW_END_PATTERN = (r"^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})$")


def hyperparameter_schema(model: str) -> dict[str, dict]:
    """Each hyperparameter's JSON type and range (spark_jobs.hyperparameters.RANGES)."""
    return {name: {"type": kind, **RANGES[model][name].schema()}
            for name, kind in HYPERPARAMETERS[model].items()}


def run_params(model: str, engines_doc: str, hyperparameters_doc: str) -> dict[str, Param]:
    """The DAG run's params, validated by Airflow when a run is triggered: unknown
    hyperparameters, wrong types, values out of range and an engine the model lacks are
    refused there."""
    engines = ["", "local", "spark"] if model in SPARK_MODELS else ["", "local"]
    return {
        "engine": Param("", type="string", enum=engines,
                        description=f"'' = RECO_ENGINE; {engines_doc}"),
        "window_days": Param(0, type="integer", minimum=0,
                             description="days of events to train on; 0 = the setting "
                                         "RECO_TRAIN_WINDOW_DAYS (default 30)"),
        "window_end": Param(None, type=["null", "string"], format="date-time",
                            pattern=WINDOW_END_PATTERN,
                            description="end of the window, RFC 3339 with its zone (e.g. "
                                        "2026-01-31T00:00:00+00:00), not in the future; "
                                        "empty = the run's interval end"),
        "hyperparameters": Param(
            {}, type="object", additionalProperties=False,
            properties=hyperparameter_schema(model), description=hyperparameters_doc),
        "promote": Param("auto", type="string", enum=list(PROMOTE),
                         description="auto = the gate may promote the run unless it is an "
                                     "experiment (engine, window_days or hyperparameters "
                                     "overridden): experiments are registered, not promoted; "
                                     "gate = the gate decides; never = registered only"),
    }


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
        params=run_params(model, engines_doc, hyperparameters_doc),
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
