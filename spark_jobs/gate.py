"""Quality gate: a run becomes the champion only if it beats the popularity baseline and is
not worse than the current champion by more than a relative tolerance.

A run's metrics are measured on the data of its day (leave-last-out over the events extracted
then), and retraining runs on newer data than the champion's. Raw scores compare only when both
runs were scored on the same split (`spark_jobs.evaluate.split_digest`). Across splits the gate
compares each run's lift over the popularity baseline measured on its own split: what makes a
day's held-out set easier or harder for every scorer (more popular items held out, say) divides
out to first order, which a raw comparison would read as a better or worse model.

A run that passes is still not promoted when its data window ends before the champion's (a
backfill): it would replace the live model with one trained on older events; nor when it has
lists for far fewer users than the champion (ALS, SASRec): those users would lose theirs; nor
when its run holds it (`hold`, an experiment or `promote` 'never'): experiments are promoted
by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spark_jobs import tracking

PRIMARY_METRIC = "ndcg_at_{k}"
# Below this the popularity baseline hits so rarely that a ratio to it is noise (0.005 NDCG@10
# over 1,000 users is 5 to 15 hits): such splits compare the scores themselves.
MIN_LIFT_BASELINE = 0.005
# The models that publish a list per user: the share of users with lists can drop.
USER_LIST_MODELS = ("als", "sasrec")
MIN_USER_COVERAGE = 0.9  # the default of the setting RECO_GATE_MIN_USER_COVERAGE


@dataclass(frozen=True)
class ChampionScore:
    # The champion's primary metric, as logged by its run; None when it logged none under this
    # name (evaluated at another k, or never evaluated): then nothing can be compared.
    score: float | None
    baseline: float | None  # the popularity baseline's score on the champion's split
    same_split: bool  # scored on the same split as the candidate


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
    # How the champion was compared: "score", "lift", "none" (there is none) or "unavailable"
    # (it logged no score under this metric)
    comparison: str = "none"
    held: bool = False  # passed, but not promoted: the run is held (an experiment, ...)

    @property
    def outcome(self) -> str:
        """The `gate` tag: accepted, held or rejected."""
        return "accepted" if self.accepted else "held" if self.held else "rejected"

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, baseline: float, champion: ChampionScore | None,
           tolerance: float) -> GateDecision:
    """Pure rule. `tolerance` is relative: 0.02 accepts down to 98% of the champion's score
    (or of its lift over popularity, when the two runs were scored on different splits)."""
    score = champion.score if champion else None
    if candidate <= baseline:
        return GateDecision(False, f"{metric} {candidate:.4f} does not beat the popularity "
                            f"baseline {baseline:.4f}", metric, candidate, baseline, score)
    beats = f"{metric} {candidate:.4f} beats the baseline {baseline:.4f}"
    if champion is None:
        return GateDecision(True, beats, metric, candidate, baseline)
    if champion.score is None:
        # Promoting here would replace a live model without knowing it is not worse.
        return GateDecision(False, f"{beats}, but the champion logged no {metric} (evaluated "
                            "at another k, or never): promote a run by hand (the model's "
                            "`champion` alias in MLflow) to compare against from now on",
                            metric, candidate, baseline, comparison="unavailable")
    if not champion.same_split and min(baseline, champion.baseline or 0.0) >= MIN_LIFT_BASELINE:
        lift, champion_lift = candidate / baseline, champion.score / champion.baseline
        if lift < champion_lift * (1.0 - tolerance):
            return GateDecision(False, f"{metric} lift over popularity {lift:.2f}x is worse than "
                                f"the champion's {champion_lift:.2f}x (scored on another split) "
                                f"beyond tolerance {tolerance:.0%}", metric, candidate, baseline,
                                score, comparison="lift")
        return GateDecision(True, f"{beats} ({lift:.2f}x) and holds up to the champion's lift "
                            f"{champion_lift:.2f}x (scored on another split)", metric, candidate,
                            baseline, score, comparison="lift")
    # The same split, or a baseline too small to divide by: the scores themselves.
    if candidate < champion.score * (1.0 - tolerance):
        return GateDecision(False, f"{metric} {candidate:.4f} is worse than the champion's "
                            f"{champion.score:.4f} beyond tolerance {tolerance:.0%}", metric,
                            candidate, baseline, score, comparison="score")
    return GateDecision(True, f"{beats} and holds up to the champion's {champion.score:.4f}",
                        metric, candidate, baseline, score, comparison="score")


def champion_score(tracking_uri: str, run_id: str, metric: str, split: str | None
                   ) -> ChampionScore:
    """The champion run's logged score (None if it logged none), and whether it was scored on
    `split`."""
    metrics, tags = tracking.run_record(tracking_uri, run_id)
    same = split is not None and tags.get(tracking.SPLIT_TAG) == split
    return ChampionScore(metrics.get(f"model.{metric}"), metrics.get(f"popularity.{metric}"),
                         same)


def older_window(tracking_uri: str, run_id: str, champion_run_id: str) -> str | None:
    """Why the run may not replace the champion when its window ends before the champion's;
    None when it does not (or either end was not logged)."""
    ours = tracking.window_end(tracking_uri, run_id)
    theirs = tracking.window_end(tracking_uri, champion_run_id)
    if ours is None or theirs is None or ours >= theirs:
        return None
    return (f"its data window ends {ours:%Y-%m-%d %H:%M} UTC, before the champion's "
            f"{theirs:%Y-%m-%d %H:%M} UTC: a backfill does not replace a model trained on "
            f"newer data")


def fewer_users(tracking_uri: str, model: str, run_id: str, champion_run_id: str,
                min_coverage: float) -> str | None:
    """Why the run may not replace the champion when it has lists for fewer than
    `min_coverage` of the champion's users (`dataset.users`); None when it may (or a count was
    not logged, or the model publishes no per-user lists)."""
    if model not in USER_LIST_MODELS:
        return None
    ours = tracking.dataset_count(tracking_uri, run_id, "users")
    theirs = tracking.dataset_count(tracking_uri, champion_run_id, "users")
    if ours is None or theirs is None or ours >= min_coverage * theirs:
        return None
    return (f"it has lists for {ours} users, fewer than {min_coverage:.0%} of the champion's "
            f"{theirs}: {theirs - ours} users would lose their {model} lists")


def hold_reason(model: str, registry_version: str, hold: str) -> str:
    """What a held run's `gate.reason` adds: why, and how to promote it anyway."""
    return (f"not promoted: {hold}; to serve it, move the {model} model's `champion` alias to "
            f"version {registry_version} in MLflow, or rerun with promote 'gate'")


def refused(decision: GateDecision, why: str) -> GateDecision:
    return GateDecision(**{**decision.as_dict(), "accepted": False,
                           "reason": f"{decision.reason}, but {why}"})


def gate(tracking_uri: str, model: str, run_id: str, registry_version: str,
         report: dict, tolerance: float, min_user_coverage: float = MIN_USER_COVERAGE,
         hold: str = "") -> GateDecision:
    """Compare the run with the baseline and the registry's champion; promote if it passes
    and is not held (`hold`: why it may not be promoted)."""
    metric = PRIMARY_METRIC.format(k=report["k"])
    candidate = report["results"]["model"][metric]
    baseline = report["results"]["popularity"][metric]
    current = tracking.champion(tracking_uri, model)
    champion = None
    if current is not None and current[1] != run_id:
        champion = champion_score(tracking_uri, current[1], metric, report.get("split"))
    decision = decide(metric, candidate, baseline, champion, tolerance)
    if decision.accepted and current is not None and current[1] != run_id:
        why = (older_window(tracking_uri, run_id, current[1])
               or fewer_users(tracking_uri, model, run_id, current[1], min_user_coverage))
        if why:
            decision = refused(decision, why)
    if decision.accepted and hold:
        decision = GateDecision(**{
            **decision.as_dict(), "accepted": False, "held": True,
            "reason": f"{decision.reason}; {hold_reason(model, registry_version, hold)}"})
    if decision.accepted:
        tracking.set_champion(tracking_uri, model, registry_version)
        current = (registry_version, run_id)
    decision = GateDecision(**{**decision.as_dict(),
                               "champion_version": current[0] if current else None,
                               "champion_run_id": current[1] if current else None})
    tags = {tracking.GATE_TAG: decision.outcome,
            "gate.reason": decision.reason, "gate.comparison": decision.comparison}
    tracking.set_tags(tracking_uri, run_id, tags)
    # On the registered version too: the registry UI shows version tags, not run tags.
    tracking.tag_version(tracking_uri, model, registry_version, tags)
    return decision
