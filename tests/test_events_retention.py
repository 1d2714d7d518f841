"""Retention of PostgreSQL `events` (RECO_EVENTS_RETENTION_DAYS), on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from reco.cli import app
from reco.events_retention import prune_events
from reco.settings import Settings, get_settings

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def add_events(pg: psycopg.Connection, days_ago: list[float]) -> None:
    for n, days in enumerate(days_ago):
        pg.execute("INSERT INTO events (event_id, user_id, item_id, event_type, event_time) "
                   "VALUES (gen_random_uuid(), %s, 'i1', 'view', %s)",
                   (f"u{n}", NOW - timedelta(days=days)))


def kept(pg: psycopg.Connection) -> list[str]:
    return [r[0] for r in pg.execute("SELECT user_id FROM events ORDER BY user_id")]


def test_events_older_than_the_retention_are_deleted_in_batches(
        pg: psycopg.Connection, settings: Settings) -> None:
    add_events(pg, [400, 91, 89.9, 30, 0, 120, 95])
    pruned = prune_events(settings.model_copy(update={"events_retention_days": 90}), NOW,
                          batch_rows=2)
    assert pruned.cutoff == NOW - timedelta(days=90)
    assert pruned.deleted == 4
    assert kept(pg) == ["u2", "u3", "u4"]
    # Off by default: every event is kept.
    assert prune_events(settings, NOW + timedelta(days=1000)).deleted == 0
    assert kept(pg) == ["u2", "u3", "u4"]


def test_the_log_stays_append_only_outside_the_declared_cutoff(pg: psycopg.Connection) -> None:
    add_events(pg, [100, 10])
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: DELETE"):
        pg.execute("DELETE FROM events")  # no cutoff declared
    with pg.transaction():
        pg.execute("SELECT set_config('reco.retention_cutoff', %s, true)",
                   ((NOW - timedelta(days=50)).isoformat(),))
        # A row younger than the cutoff declared (the savepoint keeps the transaction usable).
        with (pytest.raises(psycopg.errors.RaiseException, match="append-only: DELETE"),
              pg.transaction()):
            pg.execute("DELETE FROM events")
        pg.execute("DELETE FROM events WHERE event_time < %s", (NOW - timedelta(days=50),))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: UPDATE"):
        pg.execute("UPDATE events SET item_id = 'i2'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: TRUNCATE"):
        pg.execute("TRUNCATE events")  # a statement: the per-row trigger never saw it
    assert kept(pg) == ["u1"]


@pytest.mark.parametrize("days", [1, 30])
def test_a_retention_within_the_training_window_is_refused(days: int) -> None:
    with pytest.raises(ValidationError, match=(
            rf"RECO_EVENTS_RETENTION_DAYS \({days}\) must be 0 \(keep every event\) or more "
            r"than RECO_TRAIN_WINDOW_DAYS \(30\): training reads that many days of events")):
        Settings(events_retention_days=days)
    assert Settings(events_retention_days=31).events_retention_days == 31


def test_reco_db_prune_events(pg: psycopg.Connection, settings: Settings) -> None:
    add_events(pg, [400, 1])

    def prune(**env: str) -> str:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, ["db", "prune-events"],
                                        env={"RECO_PG_PORT": str(settings.pg_port), **env})
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert prune() == "RECO_EVENTS_RETENTION_DAYS is 0: every event is kept"
    assert kept(pg) == ["u0", "u1"]
    assert prune(RECO_EVENTS_RETENTION_DAYS="365").startswith("deleted 1 events from before ")
    assert kept(pg) == ["u1"]
