"""`reco train item2vec|als|sasrec`: the offline pipeline's steps in one process, no Airflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Train, evaluate, gate and publish a model.")
console = Console()

Engine = Annotated[str | None, typer.Option(
    "--engine", help="local (gensim / implicit) or spark (Spark ML) [default: RECO_ENGINE]")]
WindowDays = Annotated[int | None, typer.Option(
    "--window-days", min=1, help="Days of events [default: RECO_TRAIN_WINDOW_DAYS]")]
WindowEnd = Annotated[str | None, typer.Option(
    "--window-end", help="ISO 8601 end of the window [default: now]")]
Promote = Annotated[str, typer.Option(
    "--promote", help="auto: the gate may promote the run unless it overrides the engine, "
    "window or hyperparameters (an experiment); gate: the gate decides; never")]


def _param_option(example: str) -> typer.models.OptionInfo:
    """The --param option, with an example the model takes (ALS has no `epochs`)."""
    return typer.Option("--param", "-p", help="Hyperparameter override name=value "
                        f"(repeatable), e.g. -p {example}")


Item2VecParams = Annotated[list[str] | None, _param_option("epochs=20")]
ALSParams = Annotated[list[str] | None, _param_option("factors=64")]
SASRecParams = Annotated[list[str] | None, _param_option("epochs=20")]


def _parse(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not name=value", param_hint="--param")
        out[name.strip()] = value.strip()
    return out


def _run(model: str, engine: str | None, window_days: int | None, window_end: str | None,
         params: list[str] | None, promote: str) -> None:
    from spark_jobs import BadRunInput, dag_steps, pipeline

    try:  # the DAG's own check: a window ending in the future would outrank every run until then
        end = dag_steps.window_end_param(window_end or "", datetime.now(UTC))
    except BadRunInput as exc:
        raise typer.BadParameter(str(exc), param_hint="--window-end") from None
    settings = get_settings()
    try:
        cfg = pipeline.config_from_settings(
            settings, model, engine=engine, window_days=window_days, window_end=end,
            params=_parse(params))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        cfg = dag_steps.with_promotion(settings, cfg, promote)
    except BadRunInput as exc:
        raise typer.BadParameter(str(exc), param_hint="--promote") from None
    try:
        state = pipeline.run_all(cfg)
    except BadRunInput as exc:  # a run that cannot succeed (no events in the window, ...)
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps({k: state.get(k) for k in (
        "run_id", "version", "metrics", "gate", "published", "reason", "registry_retention",
        "timings", "report")}))


@app.command()
def item2vec(engine: Engine = None, window_days: WindowDays = None, window_end: WindowEnd = None,
             param: Item2VecParams = None, promote: Promote = "auto") -> None:
    """Item2Vec (skip-gram over sessions): embeddings and item neighbours."""
    _run("item2vec", engine, window_days, window_end, param, promote)


@app.command()
def als(engine: Engine = None, window_days: WindowDays = None, window_end: WindowEnd = None,
        param: ALSParams = None, promote: Promote = "auto") -> None:
    """Implicit ALS: user candidates and item neighbours."""
    _run("als", engine, window_days, window_end, param, promote)


@app.command()
def sasrec(window_days: WindowDays = None, window_end: WindowEnd = None,
           param: SASRecParams = None, promote: Promote = "auto") -> None:
    """SASRec (self-attention over each user's sequence, JAX): next-item candidates per user."""
    _run("sasrec", None, window_days, window_end, param, promote)
