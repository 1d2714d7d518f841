"""PostgreSQL access shared by the CLI, services and jobs: connections and migrations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from reco.settings import Settings

# The checkout's migrations; an installed package (the Docker image) has none beside it and
# points RECO_SQL_DIR at its copy instead.
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Serialises concurrent `reco db migrate` runs (any constant works; this one spells "reco").
_MIGRATION_LOCK_ID = 0x7265636F


@contextmanager
def connect(settings: Settings, database: str | None = None) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.pg_url(database or settings.pg_database)) as conn:
        yield conn


class MigrationsNotFound(RuntimeError):
    """No migration files where they were looked for: applying nothing would leave no tables."""


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not accept a connection within the time given."""


def connect_when_up(settings: Settings, wait_s: float,
                    interval_s: float = 1.0) -> psycopg.Connection:
    """Connect, retrying for up to `wait_s`: a migration job started beside a fresh PostgreSQL
    (docker compose's first `up`) can run before the server accepts connections."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(settings.database_url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {settings.pg_host}:{settings.pg_port} did not accept a "
                    f"connection within {wait_s:g}s: {str(exc).strip()}") from exc
        time.sleep(min(interval_s, left))


def migrations_dir(settings: Settings) -> Path:
    return settings.sql_dir or SQL_DIR


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """Ordered migrations: files named NNN_description.sql."""
    return sorted(p for p in sql_dir.glob("*.sql") if p.name[:3].isdigit())


def migrate(settings: Settings, sql_dir: Path | None = None, wait_s: float = 0.0) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; returns those applied.
    The first connection is retried for up to `wait_s` (DatabaseUnavailable after it)."""
    sql_dir = sql_dir or migrations_dir(settings)
    files = migration_files(sql_dir)
    if not files:
        raise MigrationsNotFound(
            f"no migration files (NNN_name.sql) in {sql_dir}: set RECO_SQL_DIR to the "
            "project's sql/ folder"
        )
    applied: list[str] = []
    with connect_when_up(settings, wait_s) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.commit()
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in files:
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,)
                    )
                applied.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_ID,))
    return applied
