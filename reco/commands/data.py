"""`reco data ...`: build data sets as Parquet (events sorted by time, catalogue, users)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Real and synthetic event data sets (Parquet).")
console = Console()
OutDir = Annotated[Path | None, typer.Option("--out", help="Output folder [default: under "
                                             "STATE/data/]")]


def _default_out(name: str) -> Path:
    return get_settings().state_dir / "data" / name


@app.command("movielens-100k")
def movielens_100k(
    source: Annotated[Path | None, typer.Option(
        "--source", exists=True, help="u.data (u.item beside it is used too), its folder, or a "
        "recbole wheel [default: the recbole wheel from PyPI, cached under STATE/downloads]")
    ] = None,
    out: OutDir = None,
) -> None:
    """MovieLens-100k: ratings as events (5 purchase, 4 cart, 3 click, 1-2 view) + movies."""
    from reco.data import movielens

    out = out or _default_out("movielens-100k")
    started = time.perf_counter()
    with console.status("reading MovieLens-100k"):
        events_path, items_path = movielens.build(
            source, out, get_settings().state_dir / "downloads")
    console.print(f"wrote {events_path} and {items_path} in {time.perf_counter() - started:.1f}s")


@app.command()
def synthetic(
    users: Annotated[int, typer.Option("--users", min=1)] = 1_000,
    items: Annotated[int, typer.Option("--items", min=1)] = 500,
    events: Annotated[int, typer.Option("--events", min=1)] = 100_000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    days: Annotated[float, typer.Option("--days", help="Length of the time window.")] = 30.0,
    out: OutDir = None,
) -> None:
    """A synthetic e-commerce stream: catalogue, taste groups, sessions, the purchase funnel."""
    from reco.data.synthetic import SyntheticConfig, generate

    try:
        cfg = SyntheticConfig(users=users, items=items, events=events, seed=seed, days=days)
    except ValueError as exc:  # before any work: a bad window fails deep in numpy otherwise
        raise typer.BadParameter(str(exc), param_hint="--days") from None
    out = out or _default_out("synthetic")
    started = time.perf_counter()
    columns = (TextColumn("events"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("events", total=events)
        manifest = generate(cfg, out, lambda n: progress.advance(task, n))
    elapsed = time.perf_counter() - started
    console.print(f"wrote {out} in {elapsed:.1f}s ({events / elapsed:,.0f} events/s): "
                  f"{manifest['event_counts']}")


@app.command()
def split(
    events: Annotated[Path, typer.Argument(exists=True, help="events.parquet or its folder")],
    out: OutDir = None,
) -> None:
    """Temporal leave-last-out: train / validation / test / history Parquet files."""
    from reco.data.schema import EVENTS_FILE, DataFileError
    from reco.evaluation_split import split_file

    if events.is_dir():
        events = events / EVENTS_FILE
    try:
        paths = split_file(events, out or events.parent / "split")
    except DataFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for name, path in paths.items():
        console.print(f"{name}: {path}")
