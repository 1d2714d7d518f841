"""`reco up|down|status|logs`: the local stack of real servers."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Stack commands are added by reco.stack (in progress)."""
