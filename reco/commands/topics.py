"""`reco topics create`: the platform's Kafka topics, named and sized by the settings."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from reco.settings import get_settings
from reco.topics import (
    TopicCreationFailed,
    ensure_topics,
    partition_mismatches,
    platform_topics,
)

app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
console = Console()


@app.command()
def create(
    add_partitions: Annotated[bool, typer.Option(
        help="Grow existing topics to the settings' partition counts.")] = False,
) -> None:
    """Create the events topic (RECO_TOPIC_EVENTS, RECO_TOPIC_PARTITIONS) and the dead-letter
    topic (RECO_TOPIC_DLQ) where missing, with RECO_TOPIC_REPLICATION replicas; safe to run
    again. `reco up` does this itself. An existing topic keeps its partitions unless
    --add-partitions is given; a difference is reported. Exits 1 when the broker refuses."""
    settings = get_settings()
    topics = platform_topics(settings)
    try:
        counts = asyncio.run(ensure_topics(settings.kafka_bootstrap, topics,
                                           replication=settings.topic_replication,
                                           add_partitions=add_partitions))
    except TopicCreationFailed as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from exc
    console.print("topics: " + ", ".join(f"{name} ({partitions} partitions)"
                                         for name, partitions in counts.items()))
    for mismatch in partition_mismatches(topics, counts):
        console.print(f"[yellow]{escape(mismatch)}[/]")
