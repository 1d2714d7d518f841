"""Airflow DAG, daily Item2Vec: extract -> train -> evaluate -> gate -> publish."""

from spark_jobs.training_dag import training_dag

item2vec_daily = training_dag(
    model="item2vec",
    dag_id="item2vec_daily",
    cron="0 2 * * *",
    description="Item2Vec embeddings and item neighbours, published to Redis if they pass the gate",
    engines_doc="local = gensim, spark = Spark ML",
    hyperparameters_doc=(
        "overrides of spark_jobs.item2vec.Item2VecParams, e.g. {\"window\": 10, "
        "\"epochs\": 20, \"negative\": 10, \"ns_exponent\": -0.5, \"sample\": 1e-4}; "
        "negative, ns_exponent and sample apply to engine local only"),
    doc_md=__doc__,
)
