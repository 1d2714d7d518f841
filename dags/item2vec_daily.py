"""Daily Item2Vec: extract -> train -> evaluate -> gate -> publish (logic in spark_jobs)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

MODEL = "item2vec"


@dag(
    dag_id="item2vec_daily",
    description="Item2Vec embeddings and item neighbours, published to Redis if they pass the gate",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["reco", "training", "item2vec"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2),
                  "execution_timeout": timedelta(minutes=60)},
    params={
        "engine": Param("", type="string", enum=["", "local", "spark"],
                        description="'' = RECO_ENGINE; local = gensim, spark = Spark ML"),
        "window_days": Param(0, type="integer", minimum=0,
                             description="days of events to train on; 0 = RECO_TRAIN_WINDOW_DAYS"),
        "window_end": Param("", type="string",
                            description="ISO 8601 end of the window; '' = the run's interval end"),
        "hyperparameters": Param({}, type="object", description=(
            "overrides of spark_jobs.item2vec.Item2VecParams, e.g. {\"window\": 10, "
            "\"epochs\": 20, \"negative\": 10, \"ns_exponent\": -0.5, \"sample\": 1e-4}")),
    },
    doc_md=__doc__,
)
def item2vec_daily():
    @task
    def extract() -> dict:
        from spark_jobs import dag_steps

        return dag_steps.extract(MODEL)

    @task
    def train(state: dict) -> dict:
        from spark_jobs import dag_steps

        return dag_steps.step("train", MODEL, state)

    @task
    def evaluate(state: dict) -> dict:
        from spark_jobs import dag_steps

        return dag_steps.step("evaluate", MODEL, state)

    @task
    def gate(state: dict) -> dict:
        from spark_jobs import dag_steps

        return dag_steps.step("gate", MODEL, state)

    @task
    def publish(state: dict) -> dict:
        from spark_jobs import dag_steps

        return dag_steps.step("publish", MODEL, state)

    publish(gate(evaluate(train(extract()))))


item2vec_daily()
