"""`reco replay FILE`: send a Parquet event file through the ingest HTTP API."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reco.data.schema import DataFileError
from reco.replay import ReplayOptions, ReplayRefused, ReplayStopped, ReplaySummary, replay_file
from reco.replay_rows import open_events, replay_paths

console = Console()


def _positive_rate(value: float | None) -> float | None:
    # click's own float range lets NaN through (every comparison with it is false)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number above 0, got {value}")
    return value


def replay(
    file: Annotated[Path, typer.Argument(exists=True, help="events.parquet, or a folder holding "
                                         "it (its items.parquet is sent too)")],
    rate: Annotated[float | None, typer.Option(help="Events per second [default: no limit]",
                                               callback=_positive_rate)] = None,
    url: Annotated[str | None, typer.Option(help="Ingest API [default: settings' host:port]")
                   ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000)] = 500,
    lanes: Annotated[int, typer.Option(min=1, help="Concurrent per-user-ordered streams")] = 4,
    items: Annotated[Path | None, typer.Option(exists=True, help="Catalogue Parquet")] = None,
    shift_to_now: Annotated[bool, typer.Option("--shift-to-now/--keep-time",
                                               help="Move the data so its last event is now")
                            ] = True,
    api_key: Annotated[str | None, typer.Option(
        help="X-API-Key for the ingest API's writes [default: the first of RECO_API_KEYS]",
        show_default=False)] = None,
) -> None:
    """Replay events (per-user order kept), retrying 503s; ends with a summary. By default the
    times move so that the last event is now (--keep-time sends them as they are). Rows without
    an event_id get one from their content and position, so running the same file again counts
    each event once. Exit status: 0 when everything was accepted, 1 when some events or items
    were not delivered (or the API's answers stopped it: a refused key, a wrong --url), 2 when
    the file cannot be replayed, 3 when the API rejected some as invalid."""
    from reco.settings import get_settings

    settings = get_settings()
    keys = [key.get_secret_value() for key in settings.api_keys]
    opts = ReplayOptions(url=url or f"http://{settings.host}:{settings.ingest_port}",
                         batch_size=batch_size, rate=rate, lanes=lanes,
                         api_key=api_key or (keys[0] if keys else None))
    try:
        file, items = replay_paths(file, items)
        total = open_events(file).metadata.num_rows
        columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replay", total=total)
            summary = replay_file(file, opts, items, shift_to_now,
                                  progress=lambda n: progress.advance(task, n))
    except DataFileError as exc:  # found before anything was sent
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    print_summary(summary)
    if summary.stopped:
        label = ("refused" if isinstance(summary.stopped, ReplayRefused)
                 else "stopped" if isinstance(summary.stopped, ReplayStopped) else "error")
        typer.echo(f"{label}: {summary.stopped}", err=True)
    if summary.exit_status():
        raise typer.Exit(summary.exit_status())


def print_summary(summary: ReplaySummary) -> None:
    table = Table(title="replay", show_header=False)
    data = summary.to_dict()
    for key in ("sent", "accepted", "rejected", "failed", "requests", "retries", "elapsed_s",
                "events_per_s", "items_sent", "items_accepted", "items_rejected", "items_failed"):
        table.add_row(key, str(data[key]))
    if summary.unsent:
        table.add_row("not sent (stopped first)", str(summary.unsent))
    for name, value in data["latency_ms"].items():
        table.add_row(f"batch latency {name}", f"{value} ms")
    console.print(table)
    if summary.rejections:
        reasons = Table("rejected events", "reason")
        for reason, count in summary.rejections.most_common():
            reasons.add_row(str(count), reason)
        console.print(reasons)
    if summary.last_failure and (summary.failed or summary.items_failed):
        console.print(f"last failure: {summary.last_failure}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
