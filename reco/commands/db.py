"""`reco db ...`: schema migrations, connection URLs and Redis data moves."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from reco import db
from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="PostgreSQL schema, and Redis data moves between "
                  "releases.")
console = Console()


@app.command()
def migrate(
    wait: Annotated[float, typer.Option(
        min=0, help="Seconds to keep retrying while PostgreSQL refuses connections "
        "(a server still starting).")] = 30.0,
) -> None:
    """Apply pending migrations from sql/ or RECO_SQL_DIR (safe to run again)."""
    try:
        applied = db.migrate(get_settings(), wait_s=wait)
    except (db.MigrationsNotFound, db.DatabaseUnavailable) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@app.command()
def url(
    database: Annotated[str | None, typer.Argument(
        help="Database name (default: RECO_PG_DATABASE).")] = None,
    driver: Annotated[str, typer.Option(help="URL scheme, e.g. postgresql+psycopg2 "
                                        "for SQLAlchemy.")] = "postgresql",
) -> None:
    """Print a database's connection URL with the user and password escaped, for tools that
    take a URL (Airflow's AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD, MLflow's backend store)."""
    settings = get_settings()
    typer.echo(settings.pg_url(database or settings.pg_database, driver=driver))


@app.command("carry-seen-sets")
def carry_seen_sets() -> None:
    """Redis: move the unbounded seen sets of releases before RECO_SEEN_MAX (`user:seen:*`)
    into the bounded sorted sets the processor and the API use now (safe to run again)."""
    import redis

    from reco.redis_upgrades import carry_seen_sets as carry

    settings = get_settings()
    moved = carry(redis.Redis.from_url(settings.redis_url), settings.seen_max,
                  settings.seen_ttl_s)
    console.print(f"moved {moved} seen sets" if moved else "no unbounded seen sets left")


@app.command("prune-events")
def prune_events() -> None:
    """Delete the PostgreSQL events older than RECO_EVENTS_RETENTION_DAYS (the daily
    `maintenance` DAG does it; 0, the default, keeps every event)."""
    from reco.events_retention import prune_events as prune

    pruned = prune(get_settings())
    if pruned.cutoff is None:
        console.print("RECO_EVENTS_RETENTION_DAYS is 0: every event is kept")
    else:
        console.print(f"deleted {pruned.deleted} events from before {pruned.cutoff.isoformat()}")


@app.command()
def erasures(
    user_id: Annotated[str, typer.Argument(help="The user whose erasures to list.")],
) -> None:
    """List the erasures of a user PostgreSQL has applied (`DELETE /users/{id}`; the rows name
    the user by pseudonym); exit status 1 when there is none yet."""
    from reco.erasure import recorded

    found = recorded(get_settings(), user_id)
    for row in found:
        console.print(f"erasure {row.erasure_id}: requested {row.requested_at.isoformat()}, "
                      f"applied {row.erased_at.isoformat()}, {row.events_deleted} events deleted")
    if not found:
        console.print(f"no erasure of {user_id!r} applied (yet)")
        raise typer.Exit(1)


@app.command("mirror-items")
def mirror_catalogue_items() -> None:
    """Copy every PostgreSQL catalogue item into Redis's item metadata again: after Redis lost
    its data, or after an upgrade from a release before `item:ids`; items deleted in PostgreSQL
    are removed from Redis (safe to run again, beside live upserts; the daily `maintenance` DAG
    runs it too)."""
    from serving.catalogue_mirror import mirror_catalogue_of

    done = mirror_catalogue_of(get_settings())
    deleted = f" and {done.deleted} deleted ones" if done.deleted else ""
    console.print(f"{done.items} catalogue items{deleted}, {done.written} of them written to "
                  "Redis")


@app.command("prune-airflow")
def prune_airflow() -> None:
    """Delete Airflow's history older than RECO_AIRFLOW_HISTORY_DAYS (30; 0 keeps it): its
    metadata rows (`airflow db clean`: dag runs, task instances, XComs, audit log, jobs) and
    the local stack's task log files. Runs outside Airflow's tasks, which Airflow 3 keeps
    away from its database; the `airflow-housekeeping` process of the local stack and service
    of docker-compose run it daily."""
    from reco.airflow_history import (
        AirflowCleanFailed,
        base_log_folder,
        clean_metadata,
        prune_task_logs,
    )
    from reco.stack.airflow_cli import airflow_cli_env

    settings = get_settings()
    if not settings.airflow_history_days:
        console.print("RECO_AIRFLOW_HISTORY_DAYS is 0: Airflow's history is kept")
        return
    env = airflow_cli_env(settings)
    try:
        cutoff = clean_metadata(settings, env)
    except AirflowCleanFailed as exc:
        typer.echo(str(exc), err=True)  # Airflow's output: not Rich markup
        raise typer.Exit(1) from exc
    logs = prune_task_logs(base_log_folder(env), settings.airflow_history_days)
    # One line, unwrapped: it ends up in the housekeeping service's log.
    typer.echo(f"Airflow's history from before {cutoff:%Y-%m-%d %H:%M} UTC deleted: metadata "
               f"rows, {logs.files} log files, {logs.folders} folders")
