"""`reco status`'s headline figures: their formatting, and queries that name real series."""

from __future__ import annotations

import pytest

from reco.stack.headline import HEADLINES, Headline
from tests.test_alert_rules import (
    NODE_EXPORTER_SERIES,
    POSTGRES_EXPORTER_SERIES,
    REDIS_EXPORTER_SERIES,
)
from tests.test_dashboard import _family, _series_in, exported_metrics


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (None, "s", "no data"), (float("nan"), "ratio", "no data"), (0.0123, "s", "12.3 ms"),
    (0.682, "ratio", "68.2%"), (3.5 * 2**20, "bytes", "3.5 MiB"),
    (1234.56, "req/s", "1,234.6 req/s"),
])
def test_figures_are_shown_in_their_unit(value: float | None, unit: str, shown: str) -> None:
    assert Headline("x", value, unit).formatted() == shown


def test_every_figure_reads_a_series_the_stack_exports() -> None:
    known = exported_metrics() | {_family(s) for s in REDIS_EXPORTER_SERIES
                                  | POSTGRES_EXPORTER_SERIES | NODE_EXPORTER_SERIES}
    for name, (query, _) in HEADLINES.items():
        if name == "targets up":  # Prometheus' own `up`
            continue
        series = _series_in(query)
        assert series, f"{name}: no series in {query}"
        assert {_family(s) for s in series} <= known, f"{name}: {series} not exported"
