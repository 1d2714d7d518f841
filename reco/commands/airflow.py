"""`reco airflow ARGS...`: Airflow's own CLI, configured for the local stack."""

from __future__ import annotations

import typer

from reco.settings import get_settings
from reco.stack.airflow_cli import run_airflow

# Every argument, --help included, is Airflow's: none is parsed here.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True,
                "help_option_names": []}


def airflow(ctx: typer.Context) -> None:
    """Airflow's CLI on the local stack's database and DAGs, e.g. `reco airflow dags list`
    (every argument is Airflow's; exits with its status)."""
    raise typer.Exit(run_airflow(get_settings(), ctx.args))


def register(app: typer.Typer) -> None:
    app.command(context_settings=PASS_THROUGH, add_help_option=False)(airflow)
