"""Where `reco db migrate` finds its migrations, and that finding none is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from reco import db
from reco.cli import app
from reco.settings import Settings, get_settings
from reco.stack.health import free_port


def test_the_checkout_ships_its_migrations() -> None:
    assert [p.name for p in db.migration_files()][:1] == ["001_core_tables.sql"]


def test_sql_dir_setting_is_where_migrations_are_read(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "002_more.sql").write_text("SELECT 1;")
    (tmp_path / "001_core.sql").write_text("SELECT 1;")
    (tmp_path / "notes.sql").write_text("not a migration")
    monkeypatch.setenv("RECO_SQL_DIR", str(tmp_path))
    settings = Settings()
    assert db.migrations_dir(settings) == tmp_path
    assert [p.name for p in db.migration_files(db.migrations_dir(settings))] == [
        "001_core.sql", "002_more.sql"]


def test_migrate_refuses_a_folder_without_migrations(tmp_path: Path) -> None:
    # Nothing listens on the port: the check must come before any connection.
    settings = Settings(sql_dir=tmp_path, pg_port=free_port())
    with pytest.raises(db.MigrationsNotFound, match=f"no migration files .* in {tmp_path}"):
        db.migrate(settings)


def test_cli_migrate_fails_loudly_without_migrations(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECO_SQL_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("RECO_PG_PORT", str(free_port()))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "migrate"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "no migration files" in result.output and "RECO_SQL_DIR" in result.output
    assert "up to date" not in result.output
