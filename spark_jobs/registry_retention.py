"""Registry retention: delete old registry versions and their model files, keep their runs.

Every scheduled run registers a version whose MLflow model holds the lists it publishes
(hundreds of MB at production size); kept forever, they fill the artifact store's disk. After
each publish (`spark_jobs.pipeline.publish_step`, under the model's publish lock) every version
but the newest `keep`, the champion, the one Redis serves and those of runs still in progress
loses its registry entry and its model files (the logged model's artifacts, soft-deleting the
logged model; or the run's `model/` folder for versions registered before MLflow models). Its
run keeps its params, metrics and `evaluation/` artifacts, tagged `registry_pruned`, so the
MLflow UI still shows the experiment's history and why its model is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from spark_jobs import publish, tracking

if TYPE_CHECKING:
    from spark_jobs.pipeline import PipelineConfig

log = logging.getLogger(__name__)

# A version without a gate outcome this young may belong to a run still between its train and
# publish steps (backfills run up to 10 at a time): it is kept. Older ones are of failed runs.
UNGATED_KEPT_S = 86400.0


@dataclass(frozen=True)
class Retention:
    """What one pass did: registry versions kept, pruned, and those whose pruning failed (with
    the error; retried at the next publish)."""

    model: str
    kept: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def prune_registry(tracking_uri: str, model: str, keep: int, now: datetime | None = None,
                   renew: Callable[[], None] | None = None) -> Retention:
    """Prune `model`'s registry versions but the newest `keep` (0: keep all) and those
    `kept_versions` protects. `renew` runs before each version (the caller's publish lock)."""
    if keep <= 0:
        return Retention(model)
    now = now or datetime.now(UTC)
    mlflow = tracking.client(tracking_uri)
    versions = _all_versions(mlflow, model)
    champion = tracking.champion(tracking_uri, model)
    kept = kept_versions(versions, keep, champion[0] if champion else None, now)
    pruned, failed = [], {}
    for mv in sorted(versions, key=_number):
        if str(mv.version) in kept:
            continue
        if renew is not None:
            renew()
        try:
            if _prune_version(mlflow, tracking_uri, model, mv, now):
                pruned.append(str(mv.version))
            else:
                kept.add(str(mv.version))
        except Exception as exc:  # noqa: BLE001 - one version's failure must not stop the others
            log.warning("%s registry version %s not pruned: %s", model, mv.version, exc)
            failed[str(mv.version)] = f"{type(exc).__name__}: {exc}"
    result = Retention(model, sorted(kept, key=int), pruned, failed)
    if pruned or failed:
        log.info("%s registry retention: pruned versions %s, kept %s, failed %s", model,
                 pruned, result.kept, sorted(failed, key=int))
    return result


def kept_versions(versions: Sequence[ModelVersion], keep: int, champion: str | None,
                  now: datetime) -> set[str]:
    """The versions retention keeps: the newest `keep`, the champion, the one serving, and
    young versions no gate has judged yet (their run may still need them)."""
    newest = sorted(versions, key=_number, reverse=True)[:keep]
    kept = {str(mv.version) for mv in newest}
    if champion is not None:
        kept.add(str(champion))
    for mv in versions:
        age_s = now.timestamp() - mv.creation_timestamp / 1000
        if (mv.tags.get(tracking.SERVING_TAG) == "true"
                or (tracking.GATE_TAG not in mv.tags and age_s < UNGATED_KEPT_S)):
            kept.add(str(mv.version))
    return kept


def _number(mv: ModelVersion) -> int:
    return int(mv.version)


def _all_versions(mlflow: MlflowClient, model: str) -> list[ModelVersion]:
    name = tracking.REGISTERED_MODELS[model]
    versions, token = [], None
    while True:
        page = mlflow.search_model_versions(f"name = '{name}'", page_token=token)
        versions += page
        token = page.token
        if not token:
            return versions


def _prune_version(mlflow: MlflowClient, tracking_uri: str, model: str, mv: ModelVersion,
                   now: datetime) -> bool:
    """Tag, delete the model files, then the registry version: a failure part-way leaves the
    version tagged, and the next pass finishes it. False if it became the champion since
    (an alias moved by hand, which takes no lock): MLflow would drop the alias with it."""
    current = tracking.champion(tracking_uri, model)
    if current is not None and current[0] == str(mv.version):
        return False
    name, stamp = tracking.REGISTERED_MODELS[model], now.isoformat(timespec="seconds")
    # Tagged first, so that a rollback to it meanwhile is told why it cannot be served.
    mlflow.set_model_version_tag(name, mv.version, tracking.PRUNED_TAG, stamp)
    if mv.run_id and _run_active(mlflow, mv.run_id):  # a run deleted by hand takes no tags
        tracking.set_tags(tracking_uri, mv.run_id, {tracking.PRUNED_TAG: stamp,
                                                    tracking.PRUNED_VERSION_TAG: str(mv.version)})
    _delete_model_files(mlflow, tracking_uri, mv)
    mlflow.delete_model_version(name, mv.version)
    return True


def _run_active(mlflow: MlflowClient, run_id: str) -> bool:
    """False for a run deleted by hand, or purged since (`mlflow gc`): neither takes tags."""
    run = _run(mlflow, run_id)
    return run is not None and run.info.lifecycle_stage == LifecycleStage.ACTIVE


def _run(mlflow: MlflowClient, run_id: str) -> Run | None:
    return tracking.unless_missing(lambda: mlflow.get_run(run_id))


def _delete_model_files(mlflow: MlflowClient, tracking_uri: str, mv: ModelVersion) -> None:
    """Delete what `tracking.register` pointed the version to: its logged model, or its run's
    `MODEL_ARTIFACTS` folder. A source the pipeline did not write is left alone."""
    source = mv.source or ""
    model_id = mv.model_id or source.removeprefix("models:/")
    if source.startswith("models:/") and "/" not in model_id:
        tracking.delete_logged_model(tracking_uri, model_id)
    elif mv.run_id and source == f"runs:/{mv.run_id}/{tracking.MODEL_ARTIFACTS}":
        run = _run(mlflow, mv.run_id)
        if run is None:  # purged with its artifacts (`mlflow gc`)
            return
        # Through the server's artifact proxy (mlflow-artifacts:), or the store itself.
        get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri
                                ).delete_artifacts(tracking.MODEL_ARTIFACTS)
    else:
        log.info("%s registry version %s: its files (%s) are not the pipeline's, left as they are",
                 mv.name, mv.version, source)


def after_publish(cfg: PipelineConfig) -> dict:
    """`prune_registry` under the model's publish lock, so no gate promotes and no publish
    marks another version serving while it reads them. Never fails the publish, which is done:
    a failure is a warning, and the next publish tries again."""
    if not cfg.keep_versions:
        return Retention(cfg.model).as_dict()
    try:
        with (redis.Redis.from_url(cfg.redis_url) as client,
              publish.held_lock(client, cfg.model) as lock):
            return prune_registry(cfg.mlflow_tracking_uri, cfg.model, cfg.keep_versions,
                                  renew=lambda: publish.renew(lock)).as_dict()
    except Exception as exc:  # noqa: BLE001 - the lists are published: report, do not fail
        log.warning("%s registry retention failed: %s", cfg.model, exc, exc_info=True)
        return {**Retention(cfg.model).as_dict(), "error": f"{type(exc).__name__}: {exc}"}


def discard_failed(cfg: PipelineConfig, model_id: str, registry_version: str | None) -> None:
    """Delete a failed train's registry version (if it got that far) and its logged model
    with its files: the retry logs its own, and these (the published lists) would otherwise
    stay for ever. Best effort: the train's own error is the one to raise."""
    try:
        if registry_version is not None:
            tracking.client(cfg.mlflow_tracking_uri).delete_model_version(
                tracking.REGISTERED_MODELS[cfg.model], registry_version)
        tracking.delete_logged_model(cfg.mlflow_tracking_uri, model_id)
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: the failed run's model %s was not deleted: %s", cfg.model, model_id,
                    exc)


def why_unservable(tracking_uri: str, model: str, registry_version: str) -> str | None:
    """Why `registry_version` of `model` cannot be served (pruned by retention, or no such
    version), or None when it can."""
    mlflow = tracking.client(tracking_uri)
    mv = tracking.unless_missing(lambda: mlflow.get_model_version(
        tracking.REGISTERED_MODELS[model], registry_version))
    if mv is None:
        run = _pruned_run(mlflow, model, registry_version)
        if run is None:
            return f"{model} has no registry version {registry_version}"
        return _pruned(model, registry_version, run.data.tags[tracking.PRUNED_TAG],
                       run.info.run_id)
    if tracking.PRUNED_TAG in mv.tags:
        run = _run(mlflow, mv.run_id) if mv.run_id else None
        return _pruned(model, registry_version, mv.tags[tracking.PRUNED_TAG],
                       run.info.run_id if run else None)
    return None


def _pruned_run(mlflow: MlflowClient, model: str, registry_version: str) -> Run | None:
    """The run whose registry version `registry_version` retention deleted, or None."""
    runs = mlflow.search_runs(
        [tracking.experiment_id(mlflow, model)],
        f"tags.`{tracking.PRUNED_VERSION_TAG}` = '{int(registry_version)}'", max_results=1)
    return runs[0] if runs else None


def _pruned(model: str, registry_version: str, at: str, run_id: str | None) -> str:
    run = (f"its run {run_id} keeps its params and metrics" if run_id
           else "its run was deleted")
    return (f"{model} registry version {registry_version} was pruned by registry retention at "
            f"{at} (RECO_OFFLINE_KEEP_VERSIONS): its model files are deleted, so it cannot be "
            f"served; {run}. Move the champion alias to a kept version, or train again")
