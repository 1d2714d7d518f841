"""The `airflow` CLI with the local stack's configuration (`reco airflow ...`)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from reco.settings import Settings
from reco.stack import servers
from reco.stack.components import process_env


def airflow_cli_env(settings: Settings) -> dict[str, str]:
    """What the stack's Airflow processes see: its PostgreSQL database, DAG folder, PYTHONPATH
    and the RECO_* settings (tasks run by `airflow dags test` read them). Without it the CLI
    falls back to ~/airflow and SQLite, and refuses with "Database migration required"."""
    return process_env(settings)


def run_airflow(settings: Settings, args: Sequence[str]) -> int:
    """Run the virtualenv's `airflow` with `args` as given; returns its exit status."""
    return subprocess.run([servers.venv_bin("airflow"), *args],
                          env=airflow_cli_env(settings)).returncode
