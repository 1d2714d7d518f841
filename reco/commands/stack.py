"""`reco up|down|status|logs`: the local stack of real servers."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from reco.settings import Settings, get_settings
from reco.stack import headline, local

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
    except local.UnknownComponent as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from exc
    console.print(f"stack up in {time.monotonic() - started:.0f}s; `reco status` shows it")


def down() -> None:
    """Stop every process of the local stack (data stays in the state folder)."""
    settings = get_settings()
    with console.status("stopping the stack"):
        stopped = local.down(settings)
    # The state folder is relative by default: `down` elsewhere finds no stack, and says where
    # it looked.
    console.print("stack stopped" if stopped
                  else f"no stack running under {settings.state_dir.resolve()}")


def status() -> None:
    """Each component with its process state, health and URL."""
    settings = get_settings()
    rows = local.status(settings)
    table = Table("component", "state", "uptime", "url", box=box.SIMPLE)
    for column in table.columns:
        column.no_wrap = True
    for row in rows:
        state = "[green]healthy[/]" if row.healthy else f"[red]{row.state.lower()}[/]"
        if row.state == "RUNNING" and not row.healthy:
            state = "[red]unhealthy[/]"
        uptime = f"{row.uptime_s}s" if row.uptime_s is not None else "-"
        table.add_row(row.name, state, uptime, row.url or "")
    console.print(table)
    _print_headlines(settings)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def _print_headlines(settings: Settings) -> None:
    try:
        figures = headline.read_headlines(f"http://127.0.0.1:{settings.prometheus_port}")
    except headline.PrometheusUnavailable as exc:
        console.print(f"(no headline figures: Prometheus {exc})", markup=False)
        return
    table = Table("headline figure (Prometheus)", "value", box=box.SIMPLE)
    for figure in figures:
        table.add_row(figure.name, figure.formatted())
    console.print(table)


def logs(
    name: str,
    lines: Annotated[int, typer.Option("-n", "--lines")] = 50,
) -> None:
    """The last lines of one component's log."""
    try:
        typer.echo(local.logs(get_settings(), name, lines))
    except local.UnknownComponent as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    for command in (up, down, status, logs):
        app.command()(command)
