"""The Grafana dashboard and the code agree: every panel query names an exported metric and
every exported metric is on some panel."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from tests.test_alert_rules import (
    NODE_EXPORTER_SERIES,
    POSTGRES_EXPORTER_SERIES,
    REDIS_EXPORTER_SERIES,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "monitoring/grafana/dashboards/reco.json"
# Every module that defines the project's metrics.
METRIC_MODULES = ("serving.ingest_metrics", "serving.reco_metrics", "serving.http_metrics",
                  "streaming.metrics", "reco.timing")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
ROWS = ["Ingestion", "Processing", "Recommendations", "Infrastructure"]
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "le", "increase"}


def exported_metrics() -> set[str]:
    names = set()
    for module_name in METRIC_MODULES:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                names.add(value._name)  # family name: counters without `_total`
    return names


def _family(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def panel_queries() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]]
            for p in dashboard["panels"] if p["type"] != "row"}


def _series_in(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}|\b(by|without)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*(?=\s*[\[\)])", without_labels))
    return {w for w in words if w not in PROMQL_WORDS and "_" in w}


def test_dashboard_has_the_four_rows() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS


def test_every_panel_query_names_an_exported_metric() -> None:
    exported = exported_metrics() | {_family(s) for s in REDIS_EXPORTER_SERIES
                                     | POSTGRES_EXPORTER_SERIES | NODE_EXPORTER_SERIES}
    for title, queries in panel_queries().items():
        for expr in queries:
            series = _series_in(expr)
            assert series, f"{title}: no metric found in {expr}"
            unknown = {s for s in series if _family(s) not in exported}
            assert not unknown, f"{title}: {unknown} is not exported by the code"


def test_every_exported_metric_is_on_a_panel() -> None:
    shown = {_family(s) for queries in panel_queries().values() for e in queries
             for s in _series_in(e)}
    assert exported_metrics() - shown == set()
