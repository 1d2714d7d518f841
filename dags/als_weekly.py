"""Airflow DAG, weekly ALS: extract -> train -> evaluate -> gate -> publish."""

from spark_jobs.training_dag import training_dag

als_weekly = training_dag(
    model="als",
    dag_id="als_weekly",
    cron="0 3 * * 0",
    description="ALS user candidates and item neighbours, published to Redis if they pass the gate",
    engines_doc="local = implicit, spark = Spark ML",
    hyperparameters_doc=(
        "overrides of spark_jobs.als.ALSParams (defaults: factors 128, regularization 50.0, "
        "iterations 15, alpha 5.0), e.g. {\"factors\": 64, \"iterations\": 20, "
        "\"regularization\": 20.0, \"alpha\": 2.0}"),
    doc_md=__doc__,
)
