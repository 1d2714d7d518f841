"""`reco replay FILE`: send a Parquet event file through the ingest HTTP API."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reco.data.schema import EVENTS_FILE, ITEMS_FILE
from reco.replay import ReplayOptions, ReplaySummary, replay_file

console = Console()


def replay(
    file: Path = typer.Argument(..., exists=True, help="events.parquet, or a folder holding it "
                                "(its items.parquet is sent too)"),
    rate: float | None = typer.Option(None, "--rate", help="Events per second (default: no limit)"),
    url: str | None = typer.Option(None, "--url", help="Ingest API [default: settings' host:port]"),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=1000),
    lanes: int = typer.Option(4, "--lanes", min=1, help="Concurrent per-user-ordered streams"),
    items: Path | None = typer.Option(None, "--items", exists=True, help="Catalogue Parquet"),
    shift_to_now: bool = typer.Option(True, "--shift-to-now/--keep-time",
                                      help="Move the data so its last event is now"),
) -> None:
    """Replay events (per-user order kept), retrying 503s; ends with a summary."""
    from reco.settings import get_settings

    settings = get_settings()
    if file.is_dir():
        items = items or (file / ITEMS_FILE if (file / ITEMS_FILE).exists() else None)
        file = file / EVENTS_FILE
    opts = ReplayOptions(url=url or f"http://{settings.host}:{settings.ingest_port}",
                         batch_size=batch_size, rate=rate, lanes=lanes)
    total = pq.ParquetFile(file).metadata.num_rows
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("replay", total=total)
        summary = replay_file(file, opts, items, shift_to_now,
                              progress=lambda n: progress.advance(task, n))
    print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


def print_summary(summary: ReplaySummary) -> None:
    table = Table(title="replay", show_header=False)
    data = summary.to_dict()
    for key in ("sent", "accepted", "rejected", "failed", "requests", "retries", "elapsed_s",
                "events_per_s", "items_sent", "items_accepted", "items_rejected"):
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
