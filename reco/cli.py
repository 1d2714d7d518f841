"""`reco`: the platform's command-line tool. Commands only wire plain functions."""

from __future__ import annotations

import typer

from reco.commands import data as data_commands
from reco.commands import db, demo, models, run, stack, topics
from reco.commands import replay as replay_command
from reco.commands import train as train_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(db.app, name="db")
app.add_typer(run.app, name="run")
app.add_typer(topics.app, name="topics")
stack.register(app)
app.command()(demo.demo)
app.add_typer(data_commands.app, name="data")
replay_command.register(app)
app.add_typer(train_command.app, name="train")
app.add_typer(models.app, name="models")

if __name__ == "__main__":
    app()
