"""The autoscaler's decisions, as a pure function (no Django): how many replicas an
autoscaled deployment wants, from its replicas' load reports and the gateways' demand.

* Bounds: the answer is always inside ``[min_replicas, max_replicas]``.
* Up, at once: when the mean load per ready replica is above the target (requests
  waiting per replica, or KV-cache usage), to ``ceil(ready x mean / target)`` and at
  least one more; with no replica at all, a request held by a gateway (the demand
  signal) asks for ``max(1, min_replicas)``.
* Down, only after ``scale_down_delay`` seconds without activity above the target and
  as long after the last change (no flapping inside the delay): one replica at a time
  (never to zero) while requests run, straight to ``min_replicas`` (zero included) once
  nothing has run, waited or been held for the whole delay.

Draining is the reconciler's: a replica retired by a scale down stops receiving new
requests first (the gateway routes to ready replicas only) and stops once idle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WAITING, KV_CACHE = "waiting", "kv_cache"


@dataclass(frozen=True)
class ScalePolicy:
    min_replicas: int
    max_replicas: int
    target: str = WAITING
    #: Requests waiting per replica, or KV-cache usage (0..1), above which it scales up.
    target_value: float = 2.0
    scale_down_delay: float = 300.0


@dataclass(frozen=True)
class ScaleInputs:
    desired: int  # the deployment's replica count now
    ready_loads: tuple[Mapping[str, float], ...]  # the load report of each ready replica
    now: float
    changed_at: float | None = None  # the last scale decision
    busy_at: float | None = None  # the last time load was at or above the target
    active_at: float | None = None  # the last time any request ran, waited or was held
    demand_at: float | None = None  # the last request a gateway held for lack of replicas


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    reason: str


def _pressure(policy: ScalePolicy, load: Mapping[str, float]) -> float:
    if policy.target == KV_CACHE:
        return float(load.get("kv_cache_usage_perc", 0.0))
    return float(load.get("num_requests_waiting", 0.0))


def is_active(loads: Iterable[Mapping[str, float]]) -> bool:
    return any(
        load.get("num_requests_running", 0) > 0 or load.get("num_requests_waiting", 0) > 0
        for load in loads
    )


def is_busy(policy: ScalePolicy, loads: tuple[Mapping[str, float], ...]) -> bool:
    if not loads:
        return False
    mean = sum(_pressure(policy, load) for load in loads) / len(loads)
    return mean > policy.target_value


def decide_scale(policy: ScalePolicy, inputs: ScaleInputs) -> ScaleDecision | None:
    """The replica count to move to and why, or None to stay."""
    low, high = policy.min_replicas, max(policy.min_replicas, policy.max_replicas)
    desired = inputs.desired
    if desired < low:
        return ScaleDecision(low, f"below min_replicas ({low})")
    if desired > high:
        return ScaleDecision(high, f"above max_replicas ({high})")
    loads = inputs.ready_loads
    now = inputs.now

    if desired == 0:
        if (
            high > 0
            and inputs.demand_at is not None
            and (inputs.changed_at is None or inputs.demand_at >= inputs.changed_at)
        ):
            return ScaleDecision(max(1, low), "a request is waiting and no replica runs")
        return None

    if loads and is_busy(policy, loads):
        mean = sum(_pressure(policy, load) for load in loads) / len(loads)
        want = math.ceil(len(loads) * mean / policy.target_value)
        if len(loads) >= desired:  # all started: at least one more
            want = max(desired + 1, want)
        want = min(high, want)
        if want > desired:
            unit = "requests waiting" if policy.target == WAITING else "KV-cache usage"
            return ScaleDecision(
                want,
                f"mean {unit} per ready replica {mean:.2f} above the target "
                f"{policy.target_value:g}",
            )
        return None

    if desired <= low:
        return None
    delay = policy.scale_down_delay

    def quiet_since(at: float | None) -> bool:
        return at is None or now - at >= delay

    if not (quiet_since(inputs.changed_at) and quiet_since(inputs.busy_at)):
        return None
    if len(loads) < desired:
        return None  # replicas still starting: their load is not known yet
    if not is_active(loads) and quiet_since(inputs.active_at) and quiet_since(inputs.demand_at):
        return ScaleDecision(low, f"idle for {delay:g} s")
    if desired - 1 < 1:
        return None  # requests ran within the delay: zero only once idle for all of it
    return ScaleDecision(desired - 1, f"load below the target for {delay:g} s")
