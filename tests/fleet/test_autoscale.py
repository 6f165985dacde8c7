"""The autoscaler's pure decisions: bounds, scale up on load, scale to zero and back
on demand, and no flapping inside the scale-down delay."""

from __future__ import annotations

from controlplane.fleet.autoscale import (
    KV_CACHE,
    ScaleInputs,
    ScalePolicy,
    decide_scale,
    is_active,
    is_busy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

IDLE = {"num_requests_running": 0.0, "num_requests_waiting": 0.0, "kv_cache_usage_perc": 0.0}


def busy(waiting=5.0, running=4.0, kv=0.9):
    return {
        "num_requests_running": running,
        "num_requests_waiting": waiting,
        "kv_cache_usage_perc": kv,
    }


POLICY = ScalePolicy(min_replicas=0, max_replicas=3, target_value=2.0, scale_down_delay=60)


def test_a_burst_scales_up_at_once_to_at_most_max():
    d = decide_scale(POLICY, ScaleInputs(desired=1, ready_loads=(busy(waiting=9),), now=0))
    assert d is not None and d.replicas == 3 and "above the target" in d.reason
    assert decide_scale(POLICY, ScaleInputs(desired=3, ready_loads=(busy(),) * 3, now=0)) is None


def test_kv_cache_target():
    policy = ScalePolicy(min_replicas=1, max_replicas=4, target=KV_CACHE, target_value=0.5)
    d = decide_scale(policy, ScaleInputs(desired=1, ready_loads=(busy(waiting=0, kv=0.8),), now=0))
    assert d is not None and d.replicas == 2 and "KV-cache" in d.reason


def test_idle_scales_to_zero_only_after_the_delay():
    base = ScaleInputs(desired=2, ready_loads=(IDLE, IDLE), now=100, changed_at=50, active_at=50)
    assert decide_scale(POLICY, base) is None  # 50 s < 60 s
    later = ScaleInputs(desired=2, ready_loads=(IDLE, IDLE), now=111, changed_at=50, active_at=50)
    d = decide_scale(POLICY, later)
    assert d is not None and d.replicas == 0 and "idle" in d.reason


def test_demand_wakes_a_deployment_at_zero():
    assert (
        decide_scale(POLICY, ScaleInputs(desired=0, ready_loads=(), now=10, changed_at=5)) is None
    )
    d = decide_scale(
        POLICY, ScaleInputs(desired=0, ready_loads=(), now=10, changed_at=5, demand_at=9)
    )
    assert d is not None and d.replicas == 1


def test_starting_replicas_are_not_counted_twice():
    # 1 ready and busy, 2 desired (one starting): no further step until it is ready
    inputs = ScaleInputs(desired=2, ready_loads=(busy(waiting=3),), now=0)
    assert decide_scale(POLICY, inputs) is None


load_st = st.fixed_dictionaries(
    {
        "num_requests_running": st.integers(0, 8).map(float),
        "num_requests_waiting": st.integers(0, 12).map(float),
        "kv_cache_usage_perc": st.floats(0, 1),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    low=st.integers(0, 3),
    span=st.integers(0, 4),
    target=st.sampled_from(["waiting", KV_CACHE]),
    delay=st.integers(1, 100),
    steps=st.lists(
        st.tuples(
            st.integers(1, 30),  # seconds to the next tick
            st.lists(load_st, min_size=0, max_size=8),  # loads of the replicas ready now
            st.booleans(),  # a gateway held a request since the last tick
        ),
        min_size=1,
        max_size=40,
    ),
    start=st.integers(0, 8),
)
def test_decisions_stay_in_bounds_and_never_flap_inside_the_delay(
    low, span, target, delay, steps, start
):
    policy = ScalePolicy(
        min_replicas=low,
        max_replicas=low + span,
        target=target,
        target_value=0.5 if target == KV_CACHE else 2.0,
        scale_down_delay=delay,
    )
    now = 0.0
    desired = start
    changed_at = busy_at = active_at = demand_at = None
    for gap, loads, held in steps:
        now += gap
        ready = tuple(loads[:desired])
        if held and desired == 0:
            demand_at = now
        if is_busy(policy, ready):
            busy_at = now
        if is_active(ready):
            active_at = now
        inputs = ScaleInputs(desired, ready, now, changed_at, busy_at, active_at, demand_at)
        decision = decide_scale(policy, inputs)
        if decision is None:
            assert low <= desired <= low + span  # out of bounds is always corrected
            continue
        assert low <= decision.replicas <= low + span  # never outside [min, max]
        assert decision.replicas != desired and decision.reason
        in_bounds_before = low <= desired <= low + span
        if decision.replicas < desired and in_bounds_before:
            # a scale down: only after the delay since the last change and last busy time
            assert changed_at is None or now - changed_at >= delay
            assert busy_at is None or now - busy_at >= delay
            assert not is_busy(policy, ready)
            if decision.replicas == 0:  # to zero only after a whole idle delay
                assert not is_active(ready)
                assert active_at is None or now - active_at >= delay
                assert demand_at is None or now - demand_at >= delay
        desired = decision.replicas
        changed_at = now
