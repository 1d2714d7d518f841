"""The recommendation benchmark's hit-ratio ceiling: which requests of the mix a response cache
that never ignores the user's latest event could answer from its entries."""

from __future__ import annotations

import numpy as np

from benchmarks.reco_bench_data import MixActions, Sizes


def one_user_mix(event_share: float) -> MixActions:
    # No Redis needed: events are callables the load generator would apply.
    return MixActions(None, Sizes(quick=True), np.random.default_rng(0), 0, 1, event_share)


def test_a_request_after_an_answered_request_is_hittable() -> None:
    actions = one_user_mix(0.0)
    first = next(actions)
    actions.answered(first)
    assert next(actions) == first
    assert (actions.requests, actions.hittable) == (2, 1)


def test_a_request_sent_while_the_previous_one_is_in_flight_is_not() -> None:
    actions = one_user_mix(0.0)
    first, second = next(actions), next(actions)  # no answer in between: no entry yet
    assert (actions.requests, actions.hittable) == (2, 0)
    actions.answered(first)
    third = next(actions)  # the second is still in flight
    assert actions.hittable == 0
    actions.answered(second)
    actions.answered(third)
    next(actions)
    assert (actions.requests, actions.hittable) == (4, 1)


def test_an_event_in_between_makes_the_next_request_a_miss() -> None:
    actions = one_user_mix(0.5)
    kinds = []
    for _ in range(200):
        action = next(actions)
        if not callable(action):
            actions.answered(action)
        kinds.append("event" if callable(action) else "request")
    pairs = sum(a == b == "request" for a, b in zip(kinds, kinds[1:], strict=False))
    assert 0 < actions.hittable == pairs < actions.requests
