"""The gate: beat the popularity baseline, and do not fall behind the champion beyond tolerance
(its score on the same split, its lift over popularity on another)."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from reco.stack.health import free_port
from spark_jobs import gate, tracking


def test_rule():
    assert gate.decide("ndcg_at_10", 0.30, 0.10, None, 0.02).accepted
    below = gate.decide("ndcg_at_10", 0.10, 0.10, None, 0.02)
    assert not below.accepted and "does not beat the popularity baseline" in below.reason
    same = gate.ChampionScore(0.30, 0.10, same_split=True)
    within = gate.decide("ndcg_at_10", 0.295, 0.10, same, 0.02)  # within 2%
    assert within.accepted and within.comparison == "score"
    worse = gate.decide("ndcg_at_10", 0.29, 0.10, same, 0.02)
    assert not worse.accepted and "worse than the champion" in worse.reason


def test_rule_across_splits_compares_lifts_over_popularity():
    # The champion's 0.30 was 3x its split's baseline; the candidate's split is harder for
    # every scorer (baseline 0.05), where 0.148 is 2.96x: within 2% of 3x, though far below 0.30.
    other = gate.ChampionScore(0.30, 0.10, same_split=False)
    held = gate.decide("ndcg_at_10", 0.148, 0.05, other, 0.02)
    assert held.accepted and held.comparison == "lift"
    assert "2.96x" in held.reason and "3.00x" in held.reason
    assert not gate.decide("ndcg_at_10", 0.145, 0.05, other, 0.02).accepted  # 2.90x: beyond
    # Above the champion's raw score, yet a smaller lift on an easier split: rejected.
    easier = gate.decide("ndcg_at_10", 0.40, 0.20, other, 0.02)
    assert not easier.accepted and "lift over popularity 2.00x" in easier.reason
    # A baseline too small to divide by (here 0, or none logged with the champion): the scores.
    for champion, base in ((other, 0.0), (gate.ChampionScore(0.30, None, False), 0.04)):
        low = gate.decide("ndcg_at_10", 0.05, base, champion, 0.02)
        assert not low.accepted and low.comparison == "score", low.reason
    assert gate.decide("ndcg_at_10", 0.31, 0.001, other, 0.02).comparison == "score"


def test_a_champion_without_the_metric_is_not_replaced_blindly():
    unknown = gate.ChampionScore(None, None, same_split=True)
    decision = gate.decide("ndcg_at_20", 0.11, 0.10, unknown, 0.02)
    assert not decision.accepted and decision.comparison == "unavailable"
    assert "the champion logged no ndcg_at_20" in decision.reason


def report(model: float, popularity: float, split: str = "s1", k: int = 10) -> dict:
    metric = f"ndcg_at_{k}"
    return {"k": k, "split": split, "results": {"model": {metric: model},
                                                "popularity": {metric: popularity}}}


def fake_run(uri: str, ndcg: float, popularity: float = 0.10, split: str = "s1",
             window_end: str | None = None, users: int | None = None) -> tuple[str, str]:
    """A run logged as the pipeline's evaluate step logs one."""
    dataset = {"events": 1, **({"window_end": window_end} if window_end else {}),
               **({"users": users} if users is not None else {})}
    run_id = tracking.start_run(uri, "als", "local", {"factors": 8}, dataset)
    tracking.log_metrics(uri, run_id, {"model.ndcg_at_10": ndcg,
                                       "popularity.ndcg_at_10": popularity})
    tracking.set_tags(uri, run_id, {tracking.SPLIT_TAG: split})
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
    # The registry shows each version's gate result too (it shows no run tags).
    version_tags = tracking.client(mlflow_uri).get_model_version("als", v2).tags
    assert (version_tags["gate"], version_tags["gate.reason"]) == ("rejected", tags["gate.reason"])
    assert "worse than the champion's 0.4000" in version_tags["gate.reason"]
    assert tracking.client(mlflow_uri).get_model_version("als", v4).tags["gate"] == "accepted"


@pytest.mark.integration
def test_champion_from_another_split_is_compared_by_lift(mlflow_uri):
    first, v1 = fake_run(mlflow_uri, 0.30, popularity=0.10, split="monday")
    assert gate.gate(mlflow_uri, "als", first, v1, report(0.30, 0.10, "monday"), 0.02).accepted

    # Tuesday's data is harder for every scorer: a lower score, the same lift.
    second, v2 = fake_run(mlflow_uri, 0.15, popularity=0.05, split="tuesday")
    decision = gate.gate(mlflow_uri, "als", second, v2, report(0.15, 0.05, "tuesday"), 0.02)
    assert decision.accepted and decision.comparison == "lift", decision.reason
    assert tracking.champion(mlflow_uri, "als") == (v2, second)
    tags = tracking.client(mlflow_uri).get_run(second).data.tags
    assert tags["gate.comparison"] == "lift"

    # On Tuesday's split again, a raw score below the champion's is compared as such.
    third, v3 = fake_run(mlflow_uri, 0.14, popularity=0.05, split="tuesday")
    decision = gate.gate(mlflow_uri, "als", third, v3, report(0.14, 0.05, "tuesday"), 0.02)
    assert not decision.accepted and decision.comparison == "score"
    assert tracking.champion(mlflow_uri, "als") == (v2, second)


@pytest.mark.integration
def test_a_backfill_does_not_replace_a_champion_trained_on_newer_data(mlflow_uri):
    first, v1 = fake_run(mlflow_uri, 0.30, window_end="2024-03-01T00:00:00+00:00")
    assert gate.gate(mlflow_uri, "als", first, v1, report(0.30, 0.10), 0.02).accepted

    # Better on the same split, but trained on a window that ended a month earlier.
    backfill, v2 = fake_run(mlflow_uri, 0.40, window_end="2024-02-01T00:00:00+00:00")
    decision = gate.gate(mlflow_uri, "als", backfill, v2, report(0.40, 0.10), 0.02)
    assert not decision.accepted and decision.champion_run_id == first
    assert decision.reason.endswith(
        "but its data window ends 2024-02-01 00:00 UTC, before the champion's 2024-03-01 "
        "00:00 UTC: a backfill does not replace a model trained on newer data")
    assert tracking.champion(mlflow_uri, "als") == (v1, first)
    assert tracking.client(mlflow_uri).get_run(backfill).data.tags["gate"] == "rejected"

    # The same window (another try at hyperparameters) or a later one may replace it.
    retry, v3 = fake_run(mlflow_uri, 0.31, window_end="2024-03-01T00:00:00+00:00")
    assert gate.gate(mlflow_uri, "als", retry, v3, report(0.31, 0.10), 0.02).accepted
    assert tracking.champion(mlflow_uri, "als") == (v3, retry)


@pytest.mark.integration
def test_after_a_change_of_k_the_champion_stays_until_promoted_by_hand(mlflow_uri):
    """The champion was evaluated at k=10; a run evaluated at k=20 has nothing to compare
    with. It was promoted as if there were no champion."""
    first, v1 = fake_run(mlflow_uri, 0.30)
    assert gate.gate(mlflow_uri, "als", first, v1, report(0.30, 0.10), 0.02).accepted

    at_20, v2 = fake_run(mlflow_uri, 0.11)  # logs ndcg_at_10 only, as fake runs do
    decision = gate.gate(mlflow_uri, "als", at_20, v2, report(0.11, 0.10, k=20), 0.02)
    assert not decision.accepted and decision.comparison == "unavailable"
    assert tracking.champion(mlflow_uri, "als") == (v1, first)
    assert tracking.client(mlflow_uri).get_run(at_20).data.tags["gate.comparison"] == \
        "unavailable"



@pytest.mark.integration
def test_no_champion_only_when_the_registry_says_so(mlflow_uri, monkeypatch):
    """An unanswered alias look-up read as "no champion" let an outage promote and publish a
    run that was never compared with the champion (nor refused as a backfill)."""
    assert tracking.champion(mlflow_uri, "als") is None  # no registered model
    run_id, version = fake_run(mlflow_uri, 0.30)
    assert tracking.champion(mlflow_uri, "als") is None  # registered, no alias
    tracking.set_champion(mlflow_uri, "als", version)
    assert tracking.champion(mlflow_uri, "als") == (version, run_id)

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{free_port()}"  # MLflow unreachable: the gate task must fail
    with pytest.raises(MlflowException) as failed:
        tracking.champion(down, "als")
    assert failed.value.error_code not in tracking.NO_CHAMPION_ERRORS


@pytest.mark.integration
def test_a_run_with_lists_for_far_fewer_users_does_not_replace_the_champion(mlflow_uri):
    """A 60-day experiment with lists for 363 users replaced a champion with 943: 580 users
    lost their personal ALS lists."""
    first, v1 = fake_run(mlflow_uri, 0.30, users=943)
    assert gate.gate(mlflow_uri, "als", first, v1, report(0.30, 0.10), 0.02).accepted

    fewer, v2 = fake_run(mlflow_uri, 0.40, users=363)
    decision = gate.gate(mlflow_uri, "als", fewer, v2, report(0.40, 0.10), 0.02,
                         min_user_coverage=0.9)
    assert not decision.accepted and decision.champion_run_id == first
    assert decision.reason.endswith(
        "but it has lists for 363 users, fewer than 90% of the champion's 943: 580 users "
        "would lose their als lists")
    assert tracking.champion(mlflow_uri, "als") == (v1, first)
    assert tracking.client(mlflow_uri).get_run(fewer).data.tags["gate"] == "rejected"

    # 849 is 90% of 943: enough; a threshold of 0 turns the check off.
    enough, v3 = fake_run(mlflow_uri, 0.31, users=849)
    assert gate.gate(mlflow_uri, "als", enough, v3, report(0.31, 0.10), 0.02).accepted
    few, v4 = fake_run(mlflow_uri, 0.31, users=10)
    assert gate.gate(mlflow_uri, "als", few, v4, report(0.31, 0.10), 0.02,
                     min_user_coverage=0.0).accepted
    assert tracking.champion(mlflow_uri, "als") == (v4, few)


@pytest.mark.integration
def test_a_held_run_passes_the_gate_but_is_not_promoted(mlflow_uri):
    """A manual experiment (or promote 'never') is evaluated, logged and registered, and the
    gate's reason says how to promote it by hand."""
    hold = "an experiment (window_days overridden) with promote 'auto'"
    first, v1 = fake_run(mlflow_uri, 0.30)
    assert gate.gate(mlflow_uri, "als", first, v1, report(0.30, 0.10), 0.02).accepted

    better, v2 = fake_run(mlflow_uri, 0.40)
    decision = gate.gate(mlflow_uri, "als", better, v2, report(0.40, 0.10), 0.02, hold=hold)
    assert (decision.accepted, decision.held, decision.outcome) == (False, True, "held")
    assert decision.champion_run_id == first
    assert decision.reason == (
        "ndcg_at_10 0.4000 beats the baseline 0.1000 and holds up to the champion's 0.3000; "
        f"not promoted: {hold}; to serve it, move the als model's `champion` alias to version "
        f"{v2} in MLflow, or rerun with promote 'gate'")
    assert tracking.champion(mlflow_uri, "als") == (v1, first)
    tags = tracking.client(mlflow_uri).get_model_version("als", v2).tags
    assert (tags["gate"], tags["gate.reason"]) == ("held", decision.reason)
    assert tracking.client(mlflow_uri).get_run(better).data.tags["gate"] == "held"

    # One the gate refuses anyway is rejected, for the gate's reason.
    worse, v3 = fake_run(mlflow_uri, 0.20)
    decision = gate.gate(mlflow_uri, "als", worse, v3, report(0.20, 0.10), 0.02, hold=hold)
    assert (decision.accepted, decision.held, decision.outcome) == (False, False, "rejected")
    assert "not promoted" not in decision.reason


def test_a_held_decision_is_told_apart_from_a_rejected_one():
    passed = gate.decide("ndcg_at_10", 0.30, 0.10, None, 0.02)
    assert passed.outcome == "accepted"
    assert gate.GateDecision(**{**passed.as_dict(), "accepted": False}).outcome == "rejected"
    assert gate.GateDecision(**{**passed.as_dict(), "accepted": False,
                                "held": True}).outcome == "held"
