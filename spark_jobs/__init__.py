"""The offline jobs (extract, train, evaluate, gate, publish) that Airflow and `reco train` run.

The model names live here, light to import: the demo reads them without loading Spark or
MLflow.
"""

MODELS = ("item2vec", "als", "sasrec")
SPARK_MODELS = ("item2vec", "als")  # the others train locally whatever RECO_ENGINE says
