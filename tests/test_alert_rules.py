"""Alert rules tested the Prometheus way: promtool check + promtool unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
PROMTOOL = shutil.which("promtool")
# The series of Redis's exporter the rules read: tests/test_stack.py checks the real exporter,
# started as the stack starts it, exports each of them.
REDIS_EXPORTER_SERIES = frozenset({"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes",
                                   "redis_total_system_memory_bytes", "redis_evicted_keys_total"})
# PostgreSQL's exporter, likewise.
POSTGRES_EXPORTER_SERIES = frozenset({"pg_up", "pg_stat_activity_count",
                                      "pg_settings_max_connections", "pg_database_size_bytes"})
# The node exporter's (the machine: disk space, memory, CPU), likewise.
NODE_EXPORTER_SERIES = frozenset({"node_filesystem_avail_bytes", "node_filesystem_size_bytes",
                                  "node_filesystem_readonly", "node_memory_MemAvailable_bytes",
                                  "node_memory_MemTotal_bytes", "node_cpu_seconds_total"})
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: make install")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True)


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_for_and_summary() -> None:
    rules = [r for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    tested = {t["alertname"] for case in yaml.safe_load(
        (MONITORING / "alerts.test.yml").read_text())["tests"] for t in case["alert_rule_test"]}
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert "for" in rule and rule["annotations"]["summary"], rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool test"


def _exported_series_names() -> set[str]:
    """Every series name the project's processes export (counters with `_total`, ...)."""
    from prometheus_client import REGISTRY

    import serving.http_metrics  # noqa: F401  (registers the metrics)
    import serving.reco_metrics  # noqa: F401
    import streaming.metrics  # noqa: F401

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("_sum", "_count", "")}
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in suffixes.get(family.type, ("",))}


def test_rule_tests_feed_the_series_the_code_exports() -> None:
    # A made-up series hides a rule that can never fire on the real ones.
    exported = (_exported_series_names() | {"up"}  # `up`: Prometheus's own
                | REDIS_EXPORTER_SERIES | POSTGRES_EXPORTER_SERIES | NODE_EXPORTER_SERIES)
    cases = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    for case in cases:
        for series in case["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in exported, f"{case['name']}: {name} is not exported by the code"
