"""Where `reco db migrate` finds its migrations, and that finding none is an error."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from reco import db
from reco.cli import app
from reco.settings import Settings, get_settings
from reco.stack import servers as stack_servers
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


def _migrate_cli(monkeypatch, port: int, *args: str) -> tuple[int, str]:
    """`reco db migrate` against the port: its exit code and output."""
    monkeypatch.setenv("RECO_PG_PORT", str(port))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "migrate", *args])
    finally:
        get_settings.cache_clear()
    return result.exit_code, " ".join(result.output.split())


def test_cli_migrate_gives_up_after_its_wait_with_the_reason(monkeypatch) -> None:
    port = free_port()  # nothing listens
    code, output = _migrate_cli(monkeypatch, port, "--wait", "2")
    assert code == 1
    assert f"PostgreSQL at 127.0.0.1:{port} did not accept a connection within 2s" in output
    assert "refused" in output  # the driver's own reason


@pytest.mark.integration
def test_cli_migrate_waits_for_a_postgres_that_is_still_starting(monkeypatch) -> None:
    """docker compose's first `up`: the migration job can run before the server listens."""
    import threading

    from reco.stack import servers as stack_servers
    from tests import servers

    workdir = servers.scratch_dir("pg-late")
    port = free_port()
    server = servers.ServerProcess(
        "postgres", stack_servers.postgres_command(workdir / "data", port), port, workdir)

    def start_late() -> None:  # initdb, then the server: several seconds after the CLI began
        stack_servers.prepare_postgres(workdir / "data")
        server.start()
        base = Settings(pg_port=port)
        stack_servers.ensure_databases(port, base.pg_user, base.pg_password.get_secret_value(),
                                       [base.pg_database])

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        code, output = _migrate_cli(monkeypatch, port, "--wait", "60")
    finally:
        starter.join()
        servers.remove(server)
    assert code == 0, output
    assert output.startswith("applied: 001_core_tables")


def test_item_tombstones_migrate_a_catalogue_in_use(tmp_path: Path, pg, settings: Settings
                                                      ) -> None:
    """sql/007 on a database migrated up to sql/006 that holds items: they stay live items."""
    name = f"upgrade_{free_port()}"
    base = settings.model_copy(update={"pg_database": name})
    stack_servers.ensure_databases(settings.pg_port, settings.pg_user,
                                   settings.pg_password.get_secret_value(), [name])
    for path in db.migration_files():
        if path.name < "007":
            (tmp_path / path.name).write_text(path.read_text())
    db.migrate(base, sql_dir=tmp_path)
    with psycopg.connect(base.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items (item_id, category) VALUES ('a', 'c1')")
        assert db.migrate(base)[0] == "007_item_tombstones"
        assert conn.execute("SELECT item_id, deleted_at FROM items").fetchall() == [("a", None)]
