"""The PostgreSQL JDBC jar Spark gets: RECO_JDBC_DRIVER_PATH when set (the Docker image, which
has no Maven), else the one Maven fetches."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco.settings import Settings
from reco.stack import servers
from spark_jobs import pipeline


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


def test_pipeline_sessions_get_the_configured_jar(tmp_path: Path, monkeypatch) -> None:
    jar = tmp_path / "postgresql.jar"
    jar.write_bytes(b"PK")
    cfg = pipeline.config_from_settings(
        Settings(state_dir=tmp_path, jdbc_driver_path=jar), "als")
    assert cfg.jdbc_driver_path == str(jar)
    assert pipeline.config_from_settings(Settings(state_dir=tmp_path), "als").jdbc_driver_path == ""

    seen = {}
    monkeypatch.setattr("spark_jobs.session.build_session",
                        lambda *args, jars, **kwargs: seen.setdefault("jars", jars))
    pipeline.spark_session(cfg)
    assert seen["jars"] == [jar]
    assert not (tmp_path / "jars").exists()
