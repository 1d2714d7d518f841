"""Offline-pipeline fixtures: one tiny-data SparkSession, a real MLflow server, synthetic data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reco.settings import Settings
from reco.stack import servers as stack_servers
from reco.stack.health import free_port, wait_until
from spark_jobs import tracking
from tests import servers
from tests.offline import synthetic


@pytest.fixture(scope="session")
def jdbc_jar() -> Path:
    return stack_servers.jdbc_driver_jar(servers.JARS_DIR)


@pytest.fixture(scope="session")
def spark(jdbc_jar: Path):
    from spark_jobs.session import build_session

    session = build_session("reco-tests", "local[2]", "1g", jars=[jdbc_jar],
                            shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_workdir() -> Path:
    return servers.scratch_dir("mlflow")


@pytest.fixture(scope="session")
def mlflow_artifacts(mlflow_workdir: Path) -> Path:
    """The MLflow server's `--artifacts-destination`: where its proxied artifacts are on disk."""
    return mlflow_workdir / "artifacts"


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, _migrated_database, mlflow_workdir: Path,
                  mlflow_artifacts: Path) -> Iterator[str]:
    """A real `mlflow server` on a free port, backed by the fixture PostgreSQL `mlflow` db."""
    workdir = mlflow_workdir
    port = free_port()
    base = Settings(pg_port=postgres_server.port)
    log = open(workdir / "mlflow.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [stack_servers.venv_bin("mlflow"), "server",
         "--backend-store-uri", base.pg_url(base.pg_mlflow_database),
         "--artifacts-destination", str(mlflow_artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        if not wait_until(healthy, 120, alive=lambda: proc.poll() is None):
            raise RuntimeError((workdir / "mlflow.log").read_text()[-3000:])
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


@pytest.fixture
def mlflow_uri(mlflow_server: str) -> str:
    """The MLflow server with no registered models (so no champion) at test start."""
    client = tracking.client(mlflow_server)
    for name in tracking.REGISTERED_MODELS.values():
        if client.search_registered_models(filter_string=f"name = '{name}'"):
            client.delete_registered_model(name)
    return mlflow_server


@pytest.fixture
def offline_settings(settings: Settings, pg, redis_client, mlflow_uri: str) -> Settings:
    return settings.model_copy(update={
        "mlflow_tracking_uri": mlflow_uri, "spark_jars_dir": servers.JARS_DIR,
        "jdbc_partitions": 2, "spark_driver_memory": "1g",
    })


@pytest.fixture
def small_events(pg) -> dict:
    """A few thousand structured events in the fixture PostgreSQL; returns the window end."""
    end = synthetic.window_end()
    rows = synthetic.generate(synthetic.Shape(), end)
    synthetic.insert(pg, rows)
    return {"end": end, "events": len(rows)}
