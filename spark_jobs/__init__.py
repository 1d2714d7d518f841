"""The offline jobs (extract, train, evaluate, gate, publish) that Airflow and `reco train` run.

The model and engine names live here, light to import: the demo reads them without loading
Spark or MLflow.
"""

from datetime import UTC, datetime

MODELS = ("item2vec", "als", "sasrec")
ENGINES = ("local", "spark")
SPARK_MODELS = ("item2vec", "als")  # the others train locally whatever RECO_ENGINE says


class BadRunInput(ValueError):  # noqa: N818 - reads as what it is in a task's log
    """A run's input is wrong (params, window, no data, a champion the pipeline cannot serve):
    retrying cannot help, so an Airflow task fails at once instead of retrying."""


def as_utc(moment: datetime) -> datetime:
    """Windows are in UTC: a time without a zone is read as UTC, never as the host's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
