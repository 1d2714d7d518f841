"""`reco data ...`: build data sets as Parquet (events sorted by time, catalogue, users)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Real and synthetic event data sets (Parquet).")
console = Console()


def _default_out(name: str) -> Path:
    return get_settings().state_dir / "data" / name


@app.command("movielens-100k")
def movielens_100k(
    source: Path | None = typer.Option(
        None, "--source", help="u.data (u.item beside it is used too), its folder, or a recbole "
        "wheel; default: the recbole wheel from PyPI, cached under the state folder."),
    out: Path | None = typer.Option(None, "--out", help="Output folder [default: STATE/data/movielens-100k]"),
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
    users: int = typer.Option(1_000, "--users", min=1),
    items: int = typer.Option(500, "--items", min=1),
    events: int = typer.Option(100_000, "--events", min=1),
    seed: int = typer.Option(0, "--seed"),
    days: float = typer.Option(30.0, "--days", help="Length of the time window."),
    out: Path | None = typer.Option(None, "--out", help="Output folder [default: STATE/data/synthetic]"),
) -> None:
    """A synthetic e-commerce stream: catalogue, taste groups, sessions, the purchase funnel."""
    from reco.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(users=users, items=items, events=events, seed=seed, days=days)
    out = out or _default_out("synthetic")
    started = time.perf_counter()
    columns = (TextColumn("events"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("events", total=events)
        manifest = generate(cfg, out, lambda n: progress.advance(task, n))
    elapsed = time.perf_counter() - started
    console.print(f"wrote {out} in {elapsed:.1f}s ({events / elapsed:,.0f} events/s): "
                  f"{manifest['event_counts']}")
