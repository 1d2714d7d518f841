"""Airflow's own history past RECO_AIRFLOW_HISTORY_DAYS: task log files and metadata rows.

Every run adds dag_run, task_instance, XCom and audit `log` rows and log files (serve_champions
alone runs 288 times a day), and Airflow never deletes them. The two halves run in different
places, because Airflow 3 keeps task code away from its database:

- log files: `prune_task_logs`, from the `maintenance` DAG, on the worker that writes them
  (plain files, like the official image's `clean-logs`);
- metadata: `clean_metadata`, Airflow's own `airflow db clean`, run by `reco db prune-airflow`
  outside any task (docker-compose's `airflow-housekeeping` service runs it daily). A task
  cannot run it: the Task SDK's supervisor replaces the task process's
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN with `airflow-db-not-allowed:///`
  (`airflow.sdk.execution_time.supervisor.block_orm_access`), which a child `airflow db clean`
  inherits, and Airflow's upgrade guide calls database access from tasks unsupported.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reco.settings import Settings
from reco.stack import servers

log = logging.getLogger(__name__)
CLEAN_TIMEOUT_S = 3600.0


class AirflowCleanFailed(RuntimeError):
    """`airflow db clean` exited non-zero (its output's tail is in the message) or ran over its
    time."""


@dataclass(frozen=True)
class LogsPruned:
    cutoff: datetime | None  # None: the history is kept (RECO_AIRFLOW_HISTORY_DAYS=0)
    files: int = 0
    folders: int = 0


def history_cutoff(days: int, now: datetime | None = None) -> datetime | None:
    """What is older than this goes; None when `days` is 0 (keep everything)."""
    return (now or datetime.now(UTC)) - timedelta(days=days) if days else None


def base_log_folder(airflow_env: Mapping[str, str]) -> Path:
    """Airflow's `[logging] base_log_folder` under `airflow_env` (default `$AIRFLOW_HOME/logs`),
    for callers outside Airflow; a task asks Airflow's configuration instead."""
    if folder := airflow_env.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER"):
        return Path(folder)
    home = airflow_env.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "logs"


def prune_task_logs(folder: Path, days: int, now: datetime | None = None) -> LogsPruned:
    """Delete the `*.log` files under `folder` last written before `days` ago, then the folders
    this left empty. Symbolic links (the scheduler's `latest`) and other files stay."""
    cutoff = history_cutoff(days, now)
    if cutoff is None or not folder.is_dir():
        return LogsPruned(cutoff)
    limit = cutoff.timestamp()
    files = folders = 0
    # Bottom-up, so a folder is judged after its content. Only the folders this run emptied
    # go: an empty one Airflow just made for a starting task must stay.
    emptied: set[str] = set()
    for path, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            entry = os.path.join(path, name)
            try:
                info = os.lstat(entry)
            except FileNotFoundError:
                continue
            if name.endswith(".log") and stat.S_ISREG(info.st_mode) and info.st_mtime < limit:
                os.unlink(entry)
                files += 1
                emptied.add(path)
        if path != str(folder) and (path in emptied or any(
                os.path.join(path, d) in emptied for d in dirs)):
            try:
                os.rmdir(path)  # refused while anything is left in it
            except OSError:
                continue
            folders += 1
            emptied.add(path)
    log.info("deleted %d Airflow log files and %d folders older than %s under %s", files,
             folders, cutoff.isoformat(), folder)
    return LogsPruned(cutoff, files, folders)


def clean_metadata(settings: Settings, airflow_env: Mapping[str, str],
                   now: datetime | None = None) -> datetime | None:
    """Run `airflow db clean` on the database `airflow_env` configures: rows older than
    `settings.airflow_history_days` go (each DAG's latest scheduled run stays: Airflow keeps
    it for scheduling). Returns the cutoff, None when the history is kept."""
    cutoff = history_cutoff(settings.airflow_history_days, now)
    if cutoff is None:
        return None
    # --skip-archive: no `_airflow_deleted__*` copies (they would grow instead);
    # --error-on-cleanup-failure: a table it could not clean fails the command, which exits 0
    # otherwise (a table silently growing for months).
    command = [servers.venv_bin("airflow"), "db", "clean", "--clean-before-timestamp",
               cutoff.isoformat(), "--yes", "--skip-archive", "--error-on-cleanup-failure"]
    try:
        result = subprocess.run(command, env=dict(airflow_env), capture_output=True, text=True,
                                timeout=CLEAN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AirflowCleanFailed(f"airflow db clean ran over {CLEAN_TIMEOUT_S:.0f} s and was "
                                 "stopped; what it deleted stays deleted") from exc
    if result.returncode != 0:
        raise AirflowCleanFailed(f"airflow db clean exited {result.returncode}:\n"
                                 f"{(result.stdout + result.stderr)[-3000:]}")
    log.info("airflow db clean: rows older than %s deleted", cutoff.isoformat())
    return cutoff
