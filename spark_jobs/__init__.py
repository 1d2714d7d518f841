"""The offline jobs (extract, train, evaluate, gate, publish) that Airflow and `reco train` run.

The model and engine names live here, light to import: the demo reads them without loading
Spark or MLflow.
"""

from datetime import UTC, datetime

MODELS = ("item2vec", "als", "sasrec")
ENGINES = ("local", "spark")
SPARK_MODELS = ("item2vec", "als")  # the others train locally whatever RECO_ENGINE says
# A training DAG run's params (spark_jobs.training_dag declares them): a run conf with another
# key is refused, since Airflow would let a misspelt one ("windowdays") pass unread.
RUN_PARAMS = ("engine", "window_days", "window_end", "hyperparameters", "promote")
# The `promote` param: "auto" lets the gate promote a run unless it is an experiment (it
# overrides the engine, window_days or hyperparameters), "gate" lets the gate decide,
# "never" registers the run without promoting it.
PROMOTE = ("auto", "gate", "never")


class BadRunInput(ValueError):  # noqa: N818 - reads as what it is in a task's log
    """A run's input is wrong (params, window, no data, a champion the pipeline cannot serve):
    retrying cannot help, so an Airflow task fails at once instead of retrying."""


def as_utc(moment: datetime) -> datetime:
    """Windows are in UTC: a time without a zone is read as UTC, never as the host's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
