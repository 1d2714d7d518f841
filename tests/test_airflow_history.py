"""Airflow's task log files past RECO_AIRFLOW_HISTORY_DAYS (reco/airflow_history.py), on a real
folder laid out as Airflow 3 writes it."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reco.airflow_history import base_log_folder, prune_task_logs

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def write(path: Path, days_ago: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("log line\n")
    at = (NOW - timedelta(days=days_ago)).timestamp()
    os.utime(path, (at, at))
    return path


def task_log(root: Path, run: str, days_ago: float, task: str = "serve") -> Path:
    return write(root / "dag_id=serve_champions" / f"run_id={run}" / f"task_id={task}"
                 / "attempt=1.log", days_ago)


def test_log_files_older_than_the_horizon_go_with_the_folders_they_leave_empty(
        tmp_path: Path) -> None:
    old = task_log(tmp_path, "scheduled__old", 31)
    half_old = task_log(tmp_path, "scheduled__mixed", 45, task="a")
    half_new = task_log(tmp_path, "scheduled__mixed", 2, task="b")
    new = task_log(tmp_path, "scheduled__new", 29.9)
    processor = write(tmp_path / "dag_processor" / "2026-04-01" / "dags-folder" / "a.py.log", 61)
    other = write(tmp_path / "dag_id=x" / "notes.txt", 400)  # not a log file of Airflow's
    starting = tmp_path / "dag_id=x" / "run_id=just_made"  # empty, for a task starting now
    starting.mkdir()
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "latest").symlink_to(processor.parent)

    pruned = prune_task_logs(tmp_path, 30, NOW)

    assert pruned.cutoff == NOW - timedelta(days=30)
    # Folders: the old run's and its task's, task a's, and the three under dag_processor.
    assert (pruned.files, pruned.folders) == (3, 6)
    assert not old.exists() and not old.parent.parent.exists()
    assert not half_old.exists() and not half_old.parent.exists()
    assert half_new.exists() and new.exists() and other.exists() and starting.is_dir()
    assert not (tmp_path / "dag_processor").exists()
    assert (tmp_path / "scheduler" / "latest").is_symlink()  # a dangling link, left alone
    assert tmp_path.is_dir()  # the base folder itself stays, even when emptied


def test_zero_keeps_every_log_file(tmp_path: Path) -> None:
    old = task_log(tmp_path, "scheduled__old", 4000)

    pruned = prune_task_logs(tmp_path, 0, NOW)

    assert pruned.cutoff is None and pruned.files == 0 and old.exists()


def test_a_missing_log_folder_is_nothing_to_prune(tmp_path: Path) -> None:
    assert prune_task_logs(tmp_path / "absent", 30, NOW).files == 0


def test_the_log_folder_is_airflows_setting_or_its_default_under_airflow_home(
        tmp_path: Path) -> None:
    assert base_log_folder({"AIRFLOW_HOME": str(tmp_path)}) == tmp_path / "logs"
    assert base_log_folder({"AIRFLOW_HOME": str(tmp_path),
                            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "/var/log/af"}) == Path(
        "/var/log/af")
    assert base_log_folder({}) == Path.home() / "airflow" / "logs"
