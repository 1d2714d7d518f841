"""The PostgreSQL JDBC jar Spark gets: RECO_JDBC_DRIVER_PATH when set (the Docker image, which
has no Maven), else the one Maven fetches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reco.settings import Settings
from reco.stack import servers
from spark_jobs import pipeline
from tests import servers as test_servers


def test_configured_jar_is_used_without_maven(tmp_path: Path) -> None:
    jar = tmp_path / "postgresql.jar"
    jar.write_bytes(b"PK")
    jars_dir = tmp_path / "jars"
    assert servers.jdbc_driver_jar(jars_dir, configured=jar) == jar
    assert not jars_dir.exists()  # Maven was not asked


def test_configured_jar_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jar"
    with pytest.raises(servers.ServerSetupError,
                       match=f"RECO_JDBC_DRIVER_PATH={missing} is not a file"):
        servers.jdbc_driver_jar(tmp_path / "jars", configured=missing)


# In a child process: a new JVM, whose classpath holds only the jar its settings name (the test
# session's JVM, if any, was started with the fixture jar).
READ_THROUGH_THE_JAR = """
from reco.settings import Settings
from spark_jobs import pipeline
from tests import servers as test_servers

cfg = pipeline.config_from_settings(Settings(), "als")
spark = pipeline.spark_session(cfg)
rows = spark.read.jdbc(cfg.jdbc_url, "(SELECT 42 AS answer) q", properties={
    "user": cfg.pg_user, "password": cfg.pg_password, "driver": "org.postgresql.Driver",
}).collect()
print(spark.conf.get("spark.jars"), rows[0]["answer"])
spark.stop()
"""


def test_pipeline_sessions_read_postgresql_through_the_configured_jar(
        tmp_path: Path, pg, postgres_server) -> None:
    jar = tmp_path / "configured-postgresql.jar"
    shutil.copy(servers.jdbc_driver_jar(test_servers.JARS_DIR), jar)
    assert pipeline.config_from_settings(
        Settings(state_dir=tmp_path), "als").jdbc_driver_path == ""

    # The shared jars folder holds the tests' class-data archive (a session without one
    # writes one as it exits: ~40 s more); the JDBC jar there is not on this classpath.
    env = {**os.environ, "RECO_JDBC_DRIVER_PATH": str(jar), "RECO_STATE_DIR": str(tmp_path),
           "RECO_PG_PORT": str(postgres_server.port),
           "RECO_SPARK_JARS_DIR": str(test_servers.JARS_DIR)}
    done = subprocess.run([sys.executable, "-c", READ_THROUGH_THE_JAR], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(jar), "42"]
