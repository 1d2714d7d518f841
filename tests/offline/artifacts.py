"""The MLflow test server's artifacts on disk (its `--artifacts-destination`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def on_disk(artifacts: Path, uri: str) -> Path:
    """Where the server's artifacts destination holds an `mlflow-artifacts:` URI's files."""
    return artifacts / urlparse(uri).path.lstrip("/")


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
