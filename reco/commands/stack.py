"""`reco up|down|status|logs`: the local stack of real servers."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from reco.settings import get_settings
from reco.stack import local

console = Console()


def up(
    only: Annotated[list[str] | None, typer.Option(help="Start only these components.")] = None,
) -> None:
    """Start the local stack (PostgreSQL, Redis, Kafka, MLflow, Airflow, the services)."""
    settings = get_settings()
    started = time.monotonic()
    try:
        local.up(settings, console, set(only) if only else None)
    except local.ComponentFailed as exc:
        console.print(f"[red]✗ {exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"stack up in {time.monotonic() - started:.0f}s; `reco status` shows it")


def down() -> None:
    """Stop every process of the local stack (data stays in the state folder)."""
    with console.status("stopping the stack"):
        local.down(get_settings())
    console.print("stack stopped")


def status() -> None:
    """Each component with its process state, health and URL."""
    rows = local.status(get_settings())
    table = Table("component", "process", "health", "uptime", "url")
    for row in rows:
        health = "[green]healthy[/]" if row.healthy else "[red]down[/]"
        uptime = f"{row.uptime_s}s" if row.uptime_s is not None else "-"
        table.add_row(row.name, row.state, health, uptime, row.url or "")
    console.print(table)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def logs(
    name: str,
    lines: Annotated[int, typer.Option("-n", "--lines")] = 50,
) -> None:
    """The last lines of one component's log."""
    try:
        typer.echo(local.logs(get_settings(), name, lines))
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    for command in (up, down, status, logs):
        app.command()(command)
