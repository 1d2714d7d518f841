"""`reco topics create`: the platform's Kafka topics, named and sized by the settings."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from reco.settings import get_settings
from reco.topics import TopicCreationFailed, ensure_topics, platform_topics

app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
console = Console()


@app.command()
def create() -> None:
    """Create the events topic (RECO_TOPIC_EVENTS, RECO_TOPIC_PARTITIONS) and the dead-letter
    topic (RECO_TOPIC_DLQ) where missing, with RECO_TOPIC_REPLICATION replicas; safe to run
    again. `reco up` does this itself. Exits 1 when the broker refuses a topic."""
    settings = get_settings()
    topics = platform_topics(settings)
    try:
        asyncio.run(ensure_topics(settings.kafka_bootstrap, topics,
                                  replication=settings.topic_replication))
    except TopicCreationFailed as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print("topics: " + ", ".join(f"{name} ({partitions} partitions)"
                                         for name, partitions in topics.items()))
