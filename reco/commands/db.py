"""`reco db ...`: schema migrations."""

from __future__ import annotations

import typer
from rich.console import Console

from reco import db
from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="PostgreSQL schema.")
console = Console()


@app.command()
def migrate() -> None:
    """Apply pending migrations from sql/ or RECO_SQL_DIR (safe to run again)."""
    try:
        applied = db.migrate(get_settings())
    except db.MigrationsNotFound as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
