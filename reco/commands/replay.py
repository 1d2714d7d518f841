"""`reco replay FILE`: send a Parquet event file through the ingest HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reco.data.schema import EVENTS_FILE, ITEMS_FILE
from reco.replay import ReplayOptions, ReplayRefused, ReplaySummary, replay_file

console = Console()


def replay(
    file: Annotated[Path, typer.Argument(exists=True, help="events.parquet, or a folder holding "
                                         "it (its items.parquet is sent too)")],
    rate: Annotated[float | None, typer.Option(help="Events per second [default: no limit]")
                    ] = None,
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
    """Replay events (per-user order kept), retrying 503s; ends with a summary. Exit status: 0
    when everything was accepted, 1 when some events or items were not delivered (or the key
    was refused), 3 when the API rejected some as invalid."""
    from reco.settings import get_settings

    settings = get_settings()
    if file.is_dir():
        items = items or (file / ITEMS_FILE if (file / ITEMS_FILE).exists() else None)
        file = file / EVENTS_FILE
    keys = [key.get_secret_value() for key in settings.api_keys]
    opts = ReplayOptions(url=url or f"http://{settings.host}:{settings.ingest_port}",
                         batch_size=batch_size, rate=rate, lanes=lanes,
                         api_key=api_key or (keys[0] if keys else None))
    total = pq.ParquetFile(file).metadata.num_rows
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("replay", total=total)
        try:
            summary = replay_file(file, opts, items, shift_to_now,
                                  progress=lambda n: progress.advance(task, n))
        except ReplayRefused as exc:
            console.print(f"[red]refused: {exc}[/]")
            raise typer.Exit(1) from exc
    print_summary(summary)
    if summary.exit_status():
        raise typer.Exit(summary.exit_status())


def print_summary(summary: ReplaySummary) -> None:
    table = Table(title="replay", show_header=False)
    data = summary.to_dict()
    for key in ("sent", "accepted", "rejected", "failed", "requests", "retries", "elapsed_s",
                "events_per_s", "items_sent", "items_accepted", "items_rejected", "items_failed"):
        table.add_row(key, str(data[key]))
    for name, value in data["latency_ms"].items():
        table.add_row(f"batch latency {name}", f"{value} ms")
    console.print(table)
    if summary.rejections:
        reasons = Table("rejected events", "reason")
        for reason, count in summary.rejections.most_common():
            reasons.add_row(str(count), reason)
        console.print(reasons)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
