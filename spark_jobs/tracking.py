"""MLflow tracking: one experiment and one registered model per model kind, all names here."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from spark_jobs import BadRunInput, as_utc

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENTS = {"item2vec": "item2vec", "als": "als", "sasrec": "sasrec",
               "served": "served-evaluation"}  # the demo's scores of the API's answers
REGISTERED_MODELS = {"item2vec": "item2vec", "als": "als", "sasrec": "sasrec"}
CHAMPION_ALIAS = "champion"
# Run artifact folder of the model before versions were MLflow models (spark_jobs.served_model);
# registry versions made then still point to it.
MODEL_ARTIFACTS = "model"
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
EVALUATION_ARTIFACTS = "evaluation"
PUBLISH_VERSION_TAG = "publish_version"  # run tag: the version name its lists carry in Redis
SERVING_TAG = "serving"  # model version tag: "true" on the version Redis serves
GATE_TAG = "gate"  # run and model version tag: the gate's outcome (spark_jobs.gate)
# Registry retention (spark_jobs.registry_retention): when a version's model files were deleted,
# on the version (while it is being deleted) and on its run, which keeps its params and metrics;
# the run also names the registry version, which is gone.
PRUNED_TAG = "registry_pruned"
PRUNED_VERSION_TAG = "registry_pruned.version"
SPLIT_TAG = "eval.split"  # digest of the data a run was scored on (spark_jobs.evaluate)
# What an MLflow 3 server answers when there is no champion: no such registered model, or the
# model without the alias. Anything else (outage, timeout, permission) is not "no champion".
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
NO_CHAMPION_ERRORS = (NOT_FOUND, "INVALID_PARAMETER_VALUE")
REPO_ROOT = Path(__file__).resolve().parents[1]


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def code_version(repo: Path = REPO_ROOT) -> str:
    """The git commit of the code that trained (with '-dirty' for uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "spark_jobs", "dags"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(mlflow: MlflowClient, model: str) -> str:
    name = EXPERIMENTS[model]
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException:  # created concurrently
        return mlflow.get_experiment_by_name(name).experiment_id


def start_run(tracking_uri: str, model: str, engine: str, params: dict, dataset: dict,
              run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run with the hyperparameters, the dataset's window and size, the code version
    and `tags` (the Airflow DAG run's, `spark_jobs.dag_steps.airflow_tags`)."""
    mlflow = client(tracking_uri)
    run = mlflow.create_run(
        experiment_id(mlflow, model),
        run_name=run_name or f"{model}-{engine}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={**(tags or {}), "engine": engine, "model": model,
              "mlflow.source.git.commit": code_version(), "code_version": code_version()},
    )
    flat = {**{k: str(v) for k, v in params.items()}, "engine": engine}
    for key in ("window_start", "window_end", "events", "users", "items", "train_events",
                "holdout_users", "sessions", "session_gap_s", "half_life_days"):
        if key in dataset:
            flat[f"dataset.{key}"] = str(dataset[key])
    mlflow.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
    return run.info.run_id


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float],
                model_id: str | None = None) -> None:
    """Log to the run and, with `model_id`, to its MLflow model too (the UI's Models tab)."""
    now = int(time.time() * 1000)
    client(tracking_uri).log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0, model_id=model_id)
                         for k, v in metrics.items()])


def log_curve(tracking_uri: str, run_id: str, name: str, values: list[float]) -> None:
    """One metric per step (epoch 0, 1, ...): the UI draws it as a curve."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(v), now, step) for step, v in enumerate(values)]
    for at in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client(tracking_uri).log_batch(run_id, metrics=metrics[at:at + 1000])


def log_artifacts(tracking_uri: str, run_id: str, local_dir: Path, artifact_path: str) -> None:
    client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish_run(tracking_uri: str, run_id: str, failed: bool = False) -> None:
    client(tracking_uri).set_terminated(run_id, "FAILED" if failed else "FINISHED")


def log_model(tracking_uri: str, run_id: str, model: str, model_dir: Path,
              publish_version: str, params: dict | None = None) -> str:
    """Log the trained folder as the run's MLflow model (`spark_jobs.served_model`: pyfunc,
    answers the lists it publishes) with the `params` it was trained with; returns its id."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "item_id", required=False),
                       ColSpec("string", "user_id", required=False)]),
        outputs=Schema([ColSpec("string", "query"), ColSpec("string", "item_id"),
                        ColSpec("double", "score"), ColSpec("long", "rank")]),
        params=ParamSchema([ParamSpec("k", "long", 10)]))
    mlflow_client = client(tracking_uri)
    logged = mlflow_client.create_logged_model(
        experiment_id(mlflow_client, model), name=model, source_run_id=run_id,
        tags={PUBLISH_VERSION_TAG: publish_version},
        params={k: str(v) for k, v in (params or {}).items()})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Requirements given, not inferred: inferring loads the model in a subprocess.
            mlflow.pyfunc.save_model(
                Path(tmp) / "mlflow-model", python_model=str(SERVED_MODEL_CODE),
                artifacts={"model": str(model_dir)}, signature=signature,
                metadata={"model": model, PUBLISH_VERSION_TAG: publish_version},
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}",
                                  f"pandas=={pd.__version__}"])
            mlflow_client.log_model_artifacts(logged.model_id, str(Path(tmp) / "mlflow-model"))
    except BaseException:
        mlflow_client.finalize_logged_model(logged.model_id, "FAILED")
        try:  # what was uploaded before the failure: nothing would ever delete it
            delete_logged_model(tracking_uri, logged.model_id)
        except Exception as exc:  # noqa: BLE001 - the upload's own error is the one to raise
            log.warning("failed model %s not deleted: %s", logged.model_id, exc)
        raise
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def unless_missing(read: Callable[[], T]) -> T | None:
    """`read()`, or None when MLflow answers that what it reads does not exist."""
    try:
        return read()
    except MlflowException as exc:
        if exc.error_code != NOT_FOUND:
            raise
        return None


def delete_logged_model(tracking_uri: str, model_id: str) -> None:
    """Its artifacts first, then the logged model (soft-deleted: `mlflow gc` purges it): once
    deleted, its artifact location can no longer be read. Gone already: nothing to do."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    mlflow_client = client(tracking_uri)
    logged = unless_missing(lambda: mlflow_client.get_logged_model(model_id))
    if logged is None:
        return
    get_artifact_repository(logged.artifact_location, tracking_uri=tracking_uri
                            ).delete_artifacts()
    mlflow_client.delete_logged_model(model_id)


def register(tracking_uri: str, model: str, run_id: str, model_id: str | None = None) -> str:
    """Register the run's MLflow model (`model_id`; without it, the run's `MODEL_ARTIFACTS`
    folder, as versions were registered before) as a new version; returns the version."""
    mlflow = client(tracking_uri)
    name = REGISTERED_MODELS[model]
    try:
        mlflow.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACTS}"
    version = mlflow.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
    return str(version.version)


def champion_version(tracking_uri: str, model: str) -> ModelVersion | None:
    """The registry version holding the `champion` alias, or None when there is none.

    Other MLflow errors propagate: read as "no champion", an outage would let the gate promote
    a run without comparing it with the champion (and a backfill replace newer data)."""
    try:
        return client(tracking_uri).get_model_version_by_alias(
            REGISTERED_MODELS[model], CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code not in NO_CHAMPION_ERRORS:
            raise
        return None


def champion(tracking_uri: str, model: str) -> tuple[str, str] | None:
    """(registry version, run id) of the current champion, or None when there is none."""
    mv = champion_version(tracking_uri, model)
    return None if mv is None else (str(mv.version), mv.run_id)


def publish_version(tracking_uri: str, run_id: str) -> str:
    """The version name a run publishes under (its `publish_version` tag, set by the train
    step); a run without it (registered by hand, by another tool) cannot be served."""
    version = client(tracking_uri).get_run(run_id).data.tags.get(PUBLISH_VERSION_TAG)
    if not version:
        raise BadRunInput(
            f"run {run_id} has no {PUBLISH_VERSION_TAG} tag: it was not trained by the reco "
            "pipeline (DAG or `reco train`), so it has no lists to serve; move the champion "
            "alias to a version the pipeline registered")
    return version


def tag_version(tracking_uri: str, model: str, registry_version: str,
                tags: dict[str, str]) -> None:
    mlflow = client(tracking_uri)
    for key, value in tags.items():
        mlflow.set_model_version_tag(REGISTERED_MODELS[model], registry_version, key, value)


def mark_serving(tracking_uri: str, model: str, registry_version: str) -> None:
    """Tag `registry_version` as the one Redis serves (the registry UI shows it) and untag the
    version served before."""
    mlflow = client(tracking_uri)
    name = REGISTERED_MODELS[model]
    mlflow.set_model_version_tag(name, registry_version, SERVING_TAG, "true")
    for mv in mlflow.search_model_versions(f"name = '{name}' and tags.{SERVING_TAG} = 'true'"):
        if str(mv.version) != str(registry_version):
            mlflow.delete_model_version_tag(name, mv.version, SERVING_TAG)


def run_record(tracking_uri: str, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    """A run's (metrics, tags)."""
    data = client(tracking_uri).get_run(run_id).data
    return dict(data.metrics), dict(data.tags)


def window_end(tracking_uri: str, run_id: str) -> datetime | None:
    """The end of the run's extract window (`dataset.window_end`), or None if not logged."""
    value = client(tracking_uri).get_run(run_id).data.params.get("dataset.window_end")
    try:
        return as_utc(datetime.fromisoformat(value)) if value else None
    except ValueError:
        return None


def dataset_count(tracking_uri: str, run_id: str, name: str) -> int | None:
    """A count of the run's extract (`dataset.<name>`, e.g. users), or None if not logged."""
    value = client(tracking_uri).get_run(run_id).data.params.get(f"dataset.{name}")
    try:
        return int(value) if value else None
    except ValueError:
        return None


def set_champion(tracking_uri: str, model: str, version: str | None) -> None:
    """Point the champion alias at `version`; None removes it (no champion)."""
    if version is None:
        client(tracking_uri).delete_registered_model_alias(REGISTERED_MODELS[model],
                                                           CHAMPION_ALIAS)
    else:
        client(tracking_uri).set_registered_model_alias(
            REGISTERED_MODELS[model], CHAMPION_ALIAS, version)


def download_model(tracking_uri: str, model: str, registry_version: str, dst: Path) -> Path:
    """A registry version's trained folder, for re-publishing when Redis lost it: from its
    MLflow model, or from its run's artifacts for a version registered before those."""
    import yaml
    from mlflow.artifacts import download_artifacts

    mlflow = client(tracking_uri)
    name = REGISTERED_MODELS[model]
    source = mlflow.get_model_version(name, registry_version).source
    location = mlflow.get_model_version_download_uri(name, registry_version)
    dst.mkdir(parents=True, exist_ok=True)

    def download(path: str = "") -> Path:
        return Path(download_artifacts(artifact_uri=f"{location}/{path}".rstrip("/"),
                                       dst_path=str(dst), tracking_uri=tracking_uri))

    if not source.startswith("models:/"):  # runs:/<run>/model, the folder itself
        return download()
    # Where log_model put the folder in the model: its MLmodel file says.
    flavor = yaml.safe_load(download("MLmodel").read_text())["flavors"]["python_function"]
    return download(flavor["artifacts"]["model"]["path"])
