"""`reco models serve-champion MODEL`: make serving follow the registry's `champion` alias;
`reco models rollback MODEL VERSION`: move the alias to an older version and serve it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from reco.settings import get_settings

if TYPE_CHECKING:
    from spark_jobs.pipeline import PipelineConfig

app = typer.Typer(no_args_is_help=True, help="The models in MLflow's registry and in serving.")
console = Console()

Model = Annotated[str, typer.Argument(help="item2vec, als or sasrec")]
# mlflow.environment_variables.MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, read at each download.
PROGRESS_BAR_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def no_artifact_progress_bars() -> Iterator[None]:
    """MLflow draws a tqdm bar per artifact download on stderr, amid the command's output;
    off unless the variable is set already (then restored as it was)."""
    before = os.environ.get(PROGRESS_BAR_VAR)
    os.environ[PROGRESS_BAR_VAR] = before if before is not None else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_VAR, None)


@app.command("serve-champion")
def serve_champion(model: Model) -> None:
    """Publish MODEL's champion (the alias in MLflow) to Redis unless it is serving already."""
    from spark_jobs import champion

    _run(model, champion.serve_champion)


@app.command()
def rollback(model: Model, version: Annotated[int, typer.Argument(
        help="the registry version to serve (MLflow: Models > MODEL)", min=1)]) -> None:
    """Move MODEL's champion alias to registry VERSION and serve it now."""
    from spark_jobs import champion

    _run(model, lambda cfg: champion.roll_back(cfg, str(version)))


def _run(model: str, serve: Callable[[PipelineConfig], dict]) -> None:
    from spark_jobs import MODELS, BadRunInput
    from spark_jobs.pipeline import config_from_settings

    if model not in MODELS:
        raise typer.BadParameter(f"{model!r} is not a model: expected one of "
                                 f"{', '.join(MODELS)}", param_hint="MODEL")
    try:
        with no_artifact_progress_bars():
            result = serve(config_from_settings(get_settings(), model))
    except BadRunInput as exc:  # a version the pipeline cannot serve: say why, no traceback
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(result))
