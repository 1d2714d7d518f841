"""Data-set fixtures: the recbole wheel (downloaded once into the repo's state folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco.data import movielens
from reco.stack.servers import REPO_ROOT


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    return movielens.fetch_recbole_wheel(REPO_ROOT / ".reco" / "downloads")
