"""Bad input to the CLI: exit status 2 and one error naming the option or column and the reason,
before any work starts (no traceback, no stack started, nothing sent)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from typer.testing import CliRunner

from reco.cli import app
from reco.demo import DemoOptions

EVENT = {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"],
         "timestamp": [1_700_000_000_000]}


def _said(result: Result) -> str:
    """The error output as one line (usage errors come in a box, wrapped at 80 columns)."""
    return " ".join(result.stderr.replace("│", " ").split())


def _parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _no_user(tmp: Path) -> tuple[list[str], str]:
    path = _parquet(tmp / "e.parquet", {k: v for k, v in EVENT.items() if k != "user_id"})
    return [str(path)], (f"{path}: no user_id column (its columns: item_id, event_type, "
                         "timestamp); every event needs user_id, item_id and event_type")


def _text_times(tmp: Path) -> tuple[list[str], str]:
    path = _parquet(tmp / "e.parquet", {**EVENT, "timestamp": ["2026-01-01T00:00:00Z"]})
    return [str(path)], (f"{path}: column timestamp is string; expected epoch milliseconds "
                         "(integers) or an Arrow timestamp")


def _not_parquet(tmp: Path) -> tuple[list[str], str]:
    path = tmp / "e.parquet"
    path.write_text("user_id,item_id\n")
    return [str(path)], f"{path}: cannot be read as Parquet ("


def _empty_folder(tmp: Path) -> tuple[list[str], str]:
    return [str(tmp)], f"{tmp}: a folder without events.parquet"


def _bad_catalogue(tmp: Path) -> tuple[list[str], str]:
    events = _parquet(tmp / "e.parquet", EVENT)
    items = _parquet(tmp / "i.parquet", {"title": ["no id"]})
    return [str(events), "--items", str(items)], (
        f"{items}: no item_id column (its columns: title); every catalogue row needs item_id")


@pytest.mark.parametrize("case", [_no_user, _text_times, _not_parquet, _empty_folder,
                                  _bad_catalogue])
def test_replay_refuses_a_file_it_cannot_send_before_sending_anything(
    tmp_path: Path, case: Callable[[Path], tuple[list[str], str]]
) -> None:
    args, message = case(tmp_path)
    # Port 9 (discard): a request would fail as undelivered (exit 1), not as bad input.
    result = CliRunner().invoke(app, ["replay", *args, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_data_split_refuses_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR")
    result = CliRunner().invoke(app, ["data", "split", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: cannot be read as Parquet (")
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "0"])
def test_data_synthetic_checks_days_up_front(tmp_path: Path, days: str) -> None:
    result = CliRunner().invoke(app, ["data", "synthetic", "--days", days,
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert (f"Invalid value for --days: days must be a finite number above 0, "
            f"not {float(days)}") in _said(result)
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_window_end_in_the_future_as_the_dag_does() -> None:
    """Not an experiment, so the gate could promote it: its window ending in two years, every
    scheduled run would have been refused as a backfill until then."""
    later = f"{datetime.now(UTC).year + 2}-01-01"
    result = CliRunner().invoke(app, ["train", "als", "--window-end", later])
    assert result.exit_code == 2, result.output
    assert (f"Invalid value for --window-end: window_end '{later}' is in the future"
            in _said(result))


def test_train_names_window_end_when_it_is_not_a_date() -> None:
    result = CliRunner().invoke(app, ["train", "als", "--window-end", "garbage"])
    assert result.exit_code == 2, result.output
    assert ("Invalid value for --window-end: window_end 'garbage' is not an ISO 8601 date or "
            "date-time" in _said(result))


def test_train_names_promote_when_it_is_not_a_choice() -> None:
    """`reco train` holds experiments from promotion as DAG runs do (`--promote`)."""
    result = CliRunner().invoke(app, ["train", "als", "--promote", "maybe"])
    assert result.exit_code == 2, result.output
    assert ("Invalid value for --promote: promote 'maybe' is not one of ['auto', 'gate', "
            "'never']") in _said(result)


def test_demo_checks_the_engine_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="engine 'foo' is not one of local, spark"):
        DemoOptions(engine="foo")
    result = CliRunner().invoke(app, ["demo", "--engine", "foo"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --engine: engine 'foo' is not one of local, spark" in _said(result)


@pytest.mark.parametrize("rate", ["0", "-5", "nan", "inf"])
def test_replay_checks_the_rate_up_front(tmp_path: Path, rate: str) -> None:
    events = _parquet(tmp_path / "e.parquet", EVENT)
    result = CliRunner().invoke(app, ["replay", str(events), "--rate", rate,
                                      "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert (f"Invalid value for '--rate': must be a finite number above 0, got {float(rate)}"
            in _said(result))


def test_demo_checks_max_users_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["demo", "--max-users", "0"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--max-users': Input should be greater than or equal to 1" in _said(
        result)


@pytest.mark.parametrize("model", ["item2vec", "als", "sasrec"])
def test_train_helps_with_an_example_the_model_takes(model: str) -> None:
    """`reco train als --help` gave `-p epochs=20`, which ALS refused as unknown."""
    import re

    from spark_jobs import pipeline

    result = CliRunner().invoke(app, ["train", model, "--help"])
    said = " ".join(result.stdout.replace("│", " ").split())  # the help comes in a box
    example = re.search(r"e\.g\. -p (\w+)=(\w+)", said)
    assert example, result.stdout
    cfg = pipeline.PipelineConfig(model=model, engine="local", run_dir="", window_days=1,
                                  window_end="2024-01-01T00:00:00+00:00",
                                  params={example[1]: example[2]})
    assert getattr(cfg.hyperparameters(), example[1]) == int(example[2])
