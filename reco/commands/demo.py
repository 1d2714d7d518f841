"""`reco demo`: the main job, end to end on the local stack."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from reco.demo import DemoOptions, NoDemoData, run_demo, run_evaluation
from reco.served_evaluation import BASELINE, DemoReport, log_to_mlflow
from reco.settings import Settings, get_settings

console = Console()


def demo(
    max_users: Annotated[int | None, typer.Option(min=1, help="Only the first N users.")
                         ] = None,
    engine: Annotated[str, typer.Option(help="Training engine: local or spark.")] = "local",
) -> None:
    """MovieLens-100k through ingest, Kafka, features, Airflow training and the API, scored."""
    try:
        opts = DemoOptions(max_users=max_users, engine=engine)
    except ValueError as exc:  # before the stack starts, not when the DAGs run
        raise typer.BadParameter(str(exc), param_hint="--engine") from None
    settings = get_settings()
    report = run_demo(settings, console, opts)
    print_report(report)  # before logging: a logging failure must not lose it
    print_links(settings)
    print_logged(log_to_mlflow(settings, report, engine))


def evaluate() -> None:
    """Score what the running API serves now on the last `reco demo`'s users and held-out
    items (no replay, no training): the demo's table, logged to MLflow with the model
    versions that answered."""
    settings = get_settings()
    try:
        report, loaded = run_evaluation(settings, DemoOptions())
    except NoDemoData as exc:
        Console(stderr=True).print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:  # the stack is down: say so, not a traceback
        Console(stderr=True).print(
            f"[red]the recommendation API (port {settings.reco_port}) is not answering "
            f"({exc!r}): start the stack with `reco up`[/]")
        raise typer.Exit(1) from None
    print_report(report)
    print_logged(log_to_mlflow(settings, report, loaded.engine))


def print_logged(run_id: str) -> None:
    console.print(f"\nThese figures are MLflow run {run_id} (experiment served-evaluation), next "
                  "to the training runs.")


def print_report(report: DemoReport) -> None:
    table = Table("method", "HR@10", "NDCG@10", "MRR@10", box=box.SIMPLE,
                  title=f"{report.users:,} users, temporal leave-last-out, full ranking")
    for method, m in report.metrics.items():
        table.add_row(method, f"{m['hr_at_10']:.4f}", f"{m['ndcg_at_10']:.4f}",
                      f"{m['mrr_at_10']:.4f}")
    console.print(table)
    latency = ", ".join(f"{name} {ms:.1f} ms" for name, ms in report.latency_ms.items())
    console.print(f"API latency over {report.users:,} requests: {latency}")
    console.print(f"strategies served: {report.strategies}")
    console.print(f"model versions answering: {report.model_versions or 'none published'}")
    console.print(f"({BASELINE}: the API's /popular list without each user's seen items)")


def print_links(settings: Settings) -> None:
    console.print("\nThe stack stays up for exploration (`reco down` stops it):")
    for name, url in (
        ("recommendation API docs", f"http://127.0.0.1:{settings.reco_port}/docs"),
        ("ingest API docs", f"http://127.0.0.1:{settings.ingest_port}/docs"),
        ("Airflow (DAG runs)", f"http://127.0.0.1:{settings.airflow_port}"),
        ("MLflow (runs, metrics, plots)", f"http://127.0.0.1:{settings.mlflow_port}"),
        ("Prometheus", f"http://127.0.0.1:{settings.prometheus_port}"),
    ):
        console.print(f"  {name:<30} {url}")
