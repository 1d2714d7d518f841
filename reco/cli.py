"""`reco`: the platform's command-line tool. Commands only wire plain functions."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from reco.commands import airflow, db, demo, models, run, stack, topics
from reco.commands import data as data_commands
from reco.commands import replay as replay_command
from reco.commands import train as train_command
from reco.settings import ConfigError, Settings, settings_errors

SETTINGS_EXIT = 2


class Cli(typer.Typer):
    """Refused settings print one line each (the RECO_* variable and why) and exit 2: every
    command, the services' `reco run` included, loads them inside, where a traceback would
    name the Python field and bury the reason."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            lines = settings_errors(exc)
        except (ConfigError, SettingsError) as exc:
            lines = [str(exc)]
        for line in lines:
            typer.echo(line, err=True)
        raise SystemExit(SETTINGS_EXIT)


app = Cli(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(db.app, name="db")
app.add_typer(run.app, name="run")
app.add_typer(topics.app, name="topics")
stack.register(app)
app.command()(demo.demo)
app.command()(demo.evaluate)
app.add_typer(data_commands.app, name="data")
replay_command.register(app)
app.add_typer(train_command.app, name="train")
app.add_typer(models.app, name="models")
airflow.register(app)

if __name__ == "__main__":
    app()
