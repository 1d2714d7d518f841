"""Quality gate: a run becomes the champion only if it beats the popularity baseline and is
not worse than the current champion by more than a relative tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spark_jobs import tracking

PRIMARY_METRIC = "ndcg_at_{k}"


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str
    metric: str
    candidate: float
    baseline: float
    champion: float | None = None
    champion_version: str | None = None
    champion_run_id: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, baseline: float, champion: float | None,
           tolerance: float) -> GateDecision:
    """Pure rule. `tolerance` is relative: 0.02 accepts down to 98% of the champion's score."""
    if candidate <= baseline:
        return GateDecision(False, f"{metric} {candidate:.4f} does not beat the popularity "
                            f"baseline {baseline:.4f}", metric, candidate, baseline, champion)
    if champion is not None and candidate < champion * (1.0 - tolerance):
        return GateDecision(False, f"{metric} {candidate:.4f} is worse than the champion's "
                            f"{champion:.4f} beyond tolerance {tolerance:.0%}", metric,
                            candidate, baseline, champion)
    return GateDecision(True, f"{metric} {candidate:.4f} beats the baseline {baseline:.4f}"
                        + ("" if champion is None else f" and holds up to the champion's "
                           f"{champion:.4f}"), metric, candidate, baseline, champion)


def gate(tracking_uri: str, model: str, run_id: str, registry_version: str,
         report: dict, tolerance: float) -> GateDecision:
    """Compare the run with the baseline and the registry's champion; promote if it passes."""
    metric = PRIMARY_METRIC.format(k=report["k"])
    candidate = report["results"]["model"][metric]
    baseline = report["results"]["popularity"][metric]
    current = tracking.champion(tracking_uri, model)
    champion_score = None
    if current is not None and current[1] != run_id:
        champion_score = tracking.run_metrics(tracking_uri, current[1]).get(f"model.{metric}")
    decision = decide(metric, candidate, baseline, champion_score, tolerance)
    if decision.accepted:
        tracking.set_champion(tracking_uri, model, registry_version)
        current = (registry_version, run_id)
    decision = GateDecision(**{**decision.as_dict(),
                               "champion_version": current[0] if current else None,
                               "champion_run_id": current[1] if current else None})
    tracking.set_tags(tracking_uri, run_id, {"gate": "accepted" if decision.accepted
                                             else "rejected", "gate.reason": decision.reason})
    return decision
