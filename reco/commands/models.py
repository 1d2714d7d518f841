"""`reco models serve-champion MODEL`: make serving follow the registry's `champion` alias."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="The models in MLflow's registry and in serving.")
console = Console()

Model = Annotated[str, typer.Argument(help="item2vec, als or sasrec")]


@app.command("serve-champion")
def serve_champion(model: Model) -> None:
    """Publish MODEL's champion (the alias in MLflow) to Redis unless it is serving already."""
    from spark_jobs import MODELS, BadRunInput, champion
    from spark_jobs.pipeline import config_from_settings

    if model not in MODELS:
        raise typer.BadParameter(f"{model!r} is not a model: expected one of "
                                 f"{', '.join(MODELS)}", param_hint="MODEL")
    try:
        result = champion.serve_champion(config_from_settings(get_settings(), model))
    except BadRunInput as exc:  # a champion the pipeline cannot serve: say why, no traceback
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(result))
