"""`reco run NAME`: run one of the project's own processes in the foreground.

`reco up` runs these under the process runner; run more copies of a consumer to scale it.
"""

from __future__ import annotations

import typer

from reco.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Run one of the project's processes.")


@app.command()
def ingest() -> None:
    """Event ingest API (port RECO_INGEST_PORT, default 8080)."""
    from serving.ingest import serve

    serve(get_settings())


@app.command()
def recommendations() -> None:
    """Recommendation API (port RECO_RECO_PORT, default 8081)."""
    from serving.recommendations import serve

    serve(get_settings())


@app.command()
def processor() -> None:
    """Feature processor: consumer group reco-processor, Kafka -> Redis."""
    from streaming.processor import run

    run(get_settings())


@app.command()
def archiver() -> None:
    """Event archiver: consumer group event-archiver, Kafka -> PostgreSQL."""
    from streaming.archiver import run

    run(get_settings())
