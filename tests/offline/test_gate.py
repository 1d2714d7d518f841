"""The gate: beat the popularity baseline, and do not fall behind the champion beyond tolerance."""

from __future__ import annotations

import pytest

from spark_jobs import gate, tracking


def test_rule():
    assert gate.decide("ndcg_at_10", 0.30, 0.10, None, 0.02).accepted
    below = gate.decide("ndcg_at_10", 0.10, 0.10, None, 0.02)
    assert not below.accepted and "does not beat the popularity baseline" in below.reason
    assert gate.decide("ndcg_at_10", 0.295, 0.10, 0.30, 0.02).accepted  # within 2%
    worse = gate.decide("ndcg_at_10", 0.29, 0.10, 0.30, 0.02)
    assert not worse.accepted and "worse than the champion" in worse.reason


def report(model: float, popularity: float) -> dict:
    return {"k": 10, "results": {"model": {"ndcg_at_10": model},
                                 "popularity": {"ndcg_at_10": popularity}}}


def fake_run(uri: str, ndcg: float) -> tuple[str, str]:
    run_id = tracking.start_run(uri, "als", "local", {"factors": 8}, {"events": 1})
    tracking.log_metrics(uri, run_id, {"model.ndcg_at_10": ndcg})
    tracking.finish_run(uri, run_id)
    return run_id, tracking.register(uri, "als", run_id)


@pytest.mark.integration
def test_champion_alias_follows_the_gate(mlflow_uri):
    first, v1 = fake_run(mlflow_uri, 0.40)
    decision = gate.gate(mlflow_uri, "als", first, v1, report(0.40, 0.10), 0.02)
    assert decision.accepted and decision.champion is None
    assert tracking.champion(mlflow_uri, "als") == (v1, first)

    worse, v2 = fake_run(mlflow_uri, 0.30)
    decision = gate.gate(mlflow_uri, "als", worse, v2, report(0.30, 0.10), 0.02)
    assert not decision.accepted and decision.champion == pytest.approx(0.40)
    assert decision.champion_run_id == first
    assert tracking.champion(mlflow_uri, "als") == (v1, first)

    under_baseline, v3 = fake_run(mlflow_uri, 0.45)
    decision = gate.gate(mlflow_uri, "als", under_baseline, v3, report(0.45, 0.50), 0.02)
    assert not decision.accepted

    better, v4 = fake_run(mlflow_uri, 0.395)  # within 2% of the champion: accepted
    assert gate.gate(mlflow_uri, "als", better, v4, report(0.395, 0.10), 0.02).accepted
    assert tracking.champion(mlflow_uri, "als") == (v4, better)
    tags = tracking.client(mlflow_uri).get_run(worse).data.tags
    assert tags["gate"] == "rejected"
