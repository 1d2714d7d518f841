"""Serve a model version from the registry: the publish task's last part, and "serve the champion
of MODEL", which makes serving follow the `champion` alias when someone moves it by hand.

Everything from the first look at Redis to the record in PostgreSQL and the registry's
`serving` tag holds the model's publish lock (`spark_jobs.publish.held_lock`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from reco import keys
from spark_jobs import BadRunInput, erased_users, publish, registry_retention, tracking

if TYPE_CHECKING:
    from redis.lock import Lock

    from spark_jobs.pipeline import PipelineConfig

log = logging.getLogger(__name__)


def serve_locked(cfg: PipelineConfig, client: redis.Redis, lock: Lock, registry_version: str,
                 version: str, model_dir: Path | None, work_dir: Path) -> dict:
    """Serve `version` (registry version `registry_version`), the caller holding
    the model's lock: publish it (its model folder, else downloaded from MLflow into `work_dir`)
    unless it is serving already, then record it in PostgreSQL and tag it in the registry."""
    if publish.is_serving(client, cfg.model, version):
        # Serving already: the champion re-served by an earlier run, or a retry after an
        # attempt switched Redis, then failed to record it (PostgreSQL down) or lost the
        # switch's reply before retiring the old versions. Publishing again would be refused;
        # retire and record only.
        publish.retire_others(client, lock, cfg.model, version, None, cfg.publish_batch,
                              cfg.publish_grace_s)
        _record(cfg, registry_version, version)
        return {"published": version, "keys_written": 0, "reason": f"{version} already serving"}
    if model_dir is None:
        _refuse_unservable(cfg, registry_version)  # its files pruned: say so, not a traceback
        model_dir = tracking.download_model(cfg.mlflow_tracking_uri, cfg.model,
                                            registry_version, work_dir)
        publish.renew(lock)  # the download may have taken a while
    if cfg.model in keys.USER_LISTS:
        result = _publish_without_erased_users(cfg, client, lock, version, model_dir)
    else:
        result = publish.publish_locked(client, lock, cfg.model, version,
                                        publish.model_lists(cfg.model, model_dir, version),
                                        cfg.publish_batch, cfg.publish_grace_s)
    _record(cfg, registry_version, version)
    return {"published": version, "keys_written": result.keys_written,
            "publish_s": result.seconds}


def _publish_without_erased_users(cfg: PipelineConfig, client: redis.Redis, lock: Lock,
                                  version: str, model_dir: Path) -> publish.PublishResult:
    """Publish a model with users' lists, leaving out (deleting) those of the users erased
    since it read its data: a first look before the writes, a second before the switch
    (spark_jobs/erased_users.py)."""
    users = erased_users.ModelUsers(model_dir, cfg.pseudonym_keys)
    publish.announce(client, cfg.model, version)  # erasures from now on delete its lists too
    try:
        left_out = erased_users.erased(users, cfg.database_url, client)
    except BaseException:
        publish.withdraw(client, lock, cfg.model, version)
        raise

    def erased_meanwhile() -> None:
        late = erased_users.erased(users, cfg.database_url, client) - left_out
        publish.delete_user_lists(client, cfg.model, version, late)
        if left_out or late:
            log.info("%s %s: lists of %d erased user(s) left out", cfg.model, version,
                     len(left_out | late))

    return publish.publish_locked(client, lock, cfg.model, version,
                                  publish.model_lists(cfg.model, model_dir, version, left_out),
                                  cfg.publish_batch, cfg.publish_grace_s,
                                  before_switch=erased_meanwhile)


def _refuse_unservable(cfg: PipelineConfig, registry_version: str) -> None:
    why = registry_retention.why_unservable(cfg.mlflow_tracking_uri, cfg.model, registry_version)
    if why:
        raise BadRunInput(why)


def _record(cfg: PipelineConfig, registry_version: str, version: str) -> None:
    import psycopg

    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        publish.record_published(conn, cfg.model, version)
    tracking.mark_serving(cfg.mlflow_tracking_uri, cfg.model, registry_version)


def serve_champion(cfg: PipelineConfig) -> dict:
    """Make Redis serve the registry's champion of `cfg.model` (a promotion or a rollback by
    hand in the MLflow UI). Cheap when it serves already: one alias look-up, one run read and
    two Redis reads, no lock."""
    with redis.Redis.from_url(cfg.redis_url) as client:
        return _serve_champion(cfg, client)


def _serve_champion(cfg: PipelineConfig, client: redis.Redis) -> dict:
    uri, model = cfg.mlflow_tracking_uri, cfg.model
    mv = tracking.champion_version(uri, model)
    if mv is None:
        return {"model": model, "published": None, "reason": f"{model} has no champion"}
    # Tagged `serving` only after its record in PostgreSQL: both done, nothing to do.
    if (mv.tags.get(tracking.SERVING_TAG) == "true"
            and publish.is_serving(client, model, tracking.publish_version(uri, mv.run_id))):
        return {"model": model, "published": None, "champion_version": str(mv.version),
                "reason": f"registry version {mv.version} already serving"}
    with publish.held_lock(client, model) as lock:
        # Read again under the lock: a gate may have moved the alias meanwhile.
        current = tracking.champion(uri, model)
        if current is None:
            return {"model": model, "published": None, "reason": f"{model} has no champion"}
        registry_version, run_id = current
        version = tracking.publish_version(uri, run_id)
        with tempfile.TemporaryDirectory(prefix=f"reco-champion-{model}-") as work:
            served = serve_locked(cfg, client, lock, registry_version, version, None,
                                  Path(work))
    log.info("%s: registry version %s (%s) serving", model, registry_version, version)
    return {"model": model, "champion_version": registry_version, **served}


def roll_back(cfg: PipelineConfig, registry_version: str) -> dict:
    """Move `cfg.model`'s champion alias to `registry_version` and serve it, as a rollback by
    hand in the MLflow UI and `serve_champion`, all under the model's publish lock: a gate
    beside it could otherwise promote its own run over the rollback. A version that cannot be
    served (pruned by retention, which the UI no longer lists, or not trained by the pipeline)
    is refused by name before the alias moves; if serving it fails before Redis switched, the
    alias goes back: a champion that does not serve would fail `serve_champions` and every
    gate after it."""
    uri, model = cfg.mlflow_tracking_uri, cfg.model
    _refuse_unservable(cfg, registry_version)
    version = tracking.publish_version(uri, _run_of(cfg, registry_version))
    with (redis.Redis.from_url(cfg.redis_url) as client,
          publish.held_lock(client, model) as lock):
        previous = tracking.champion(uri, model)
        tracking.set_champion(uri, model, registry_version)
        try:
            with tempfile.TemporaryDirectory(prefix=f"reco-champion-{model}-") as work:
                served = serve_locked(cfg, client, lock, registry_version, version, None,
                                      Path(work))
        except BaseException:
            if not _switched(client, model, version):
                tracking.set_champion(uri, model, previous[0] if previous else None)
            raise
    log.info("%s: rolled back to registry version %s (%s)", model, registry_version, version)
    return {"model": model, "champion_version": registry_version, **served}


def _run_of(cfg: PipelineConfig, registry_version: str) -> str:
    run_id = tracking.client(cfg.mlflow_tracking_uri).get_model_version(
        tracking.REGISTERED_MODELS[cfg.model], registry_version).run_id
    if not run_id:
        raise BadRunInput(f"{cfg.model} registry version {registry_version} has no run: it was "
                          "not trained by the reco pipeline, so it has no lists to serve")
    return run_id


def _switched(client: redis.Redis, model: str, version: str) -> bool:
    """Whether Redis serves `version` now; unknown (Redis gone) counts as no."""
    try:
        return publish.current_version(client, model) == version
    except redis.RedisError:
        return False
