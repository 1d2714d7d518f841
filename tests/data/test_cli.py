"""The data commands are wired into `reco` and write where they are told."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from reco.cli import app


def test_reco_data_commands(tmp_path: Path, recbole_wheel: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synthetic", "--users", "20", "--items", "30",
                                 "--events", "500", "--seed", "4", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "s" / "events.parquet")) == 500

    result = runner.invoke(app, ["data", "movielens-100k", "--source", str(recbole_wheel),
                                 "--out", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "split", str(tmp_path / "ml")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "ml" / "split" / "test.parquet")) == 943
