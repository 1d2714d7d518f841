"""Airflow DAG, daily SASRec: extract -> train -> evaluate -> gate -> publish."""

from spark_jobs.training_dag import training_dag

sasrec_daily = training_dag(
    model="sasrec",
    dag_id="sasrec_daily",
    cron="30 2 * * *",
    description="SASRec next-item candidates per user, published to Redis if they pass the gate",
    engines_doc="local only (JAX; '' means local here); the Spark engine does not exist",
    hyperparameters_doc=(
        "overrides of spark_jobs.sasrec.SASRecParams, e.g. {\"epochs\": 100, "
        "\"dim\": 64, \"blocks\": 2, \"dropout\": 0.5, \"temperature\": 2.0}"),
    doc_md=__doc__,
)
