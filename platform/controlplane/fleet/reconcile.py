"""The reconciler's decisions, as pure functions (no Django): what to create, drain,
stop and forget for each deployment, and how an agent's report moves a replica's state.

Lifecycle of a replica, and who moves it:

    pending --placement--> placed --agent--> starting --agent--> ready
       |                     |                   |                 |
       +--(not placed yet)---+-------------------+--> draining (ready ones only; the
                                                      gateway stops routing to it)
                                                           |  drain time over, or no
                                                           v  request running
                                 failed <--agent--      stopped (out of the node's
                                                         desired state; forgotten once
                                                         the agent confirms)

Rolling update (the deployment's spec hash changed): at most ``max_surge`` replicas
above the desired count; a replica of the old spec is drained only when a new one is
ready to take its place. Old replicas that serve nothing (not ready) go at once.
Scale down drains the newest replicas first (unplaced and not-ready ones before those
that serve). Replicas on a lost node are forgotten and replaced elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PENDING, PLACED, STARTING, READY = "pending", "placed", "starting", "ready"
DRAINING, STOPPED, FAILED = "draining", "stopped", "failed"
#: States in which a replica is (or will be) in its node's desired state.
ON_NODE = (PLACED, STARTING, READY, FAILED, DRAINING)
#: A drain never ends before this: the gateways need a moment to apply the snapshot
#: that no longer routes to the replica.
MIN_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class DeploymentView:
    id: str
    replicas: int
    spec_hash: str


@dataclass(frozen=True)
class ReplicaView:
    id: str
    deployment: str
    spec_hash: str
    state: str
    created_at: float
    node: str | None = None
    node_lost: bool = False
    drain_started_at: float | None = None
    load: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Create:
    deployment: str
    count: int


@dataclass(frozen=True)
class Drain:
    """Stop routing to a ready replica; it keeps running until the drain ends."""

    replica: str
    reason: str


@dataclass(frozen=True)
class Stop:
    """Take the replica out of its node's desired state (the agent stops it)."""

    replica: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Delete the replica's row: it has no node, or its node is lost."""

    replica: str
    reason: str


Action = Create | Drain | Stop | Forget

# Which replica goes first when there are too many: unplaced, then not yet serving,
# then serving; newest first within each.
_GIVE_UP_ORDER = {PENDING: 0, FAILED: 1, PLACED: 2, STARTING: 3, READY: 4}


def _retire(replica: ReplicaView, reason: str) -> Action:
    if replica.node is None:
        return Forget(replica.id, reason)
    if replica.state == READY:
        return Drain(replica.id, reason)
    return Stop(replica.id, reason)


def _drain_over(replica: ReplicaView, now: float, drain_seconds: float) -> bool:
    started = replica.drain_started_at if replica.drain_started_at is not None else now
    elapsed = now - started
    if elapsed >= drain_seconds:
        return True
    idle = (
        replica.load.get("num_requests_running", 1) == 0
        and replica.load.get("num_requests_waiting", 1) == 0
    )
    return idle and elapsed >= MIN_DRAIN_SECONDS


def plan_deployment(
    deployment: DeploymentView,
    replicas: Iterable[ReplicaView],
    *,
    now: float,
    drain_seconds: float,
    max_surge: int = 1,
) -> list[Action]:
    actions: list[Action] = []
    live: list[ReplicaView] = []
    for replica in sorted(replicas, key=lambda r: (r.created_at, r.id)):
        if replica.node_lost:
            actions.append(Forget(replica.id, f"node {replica.node} was lost"))
        elif replica.state == DRAINING:
            if _drain_over(replica, now, drain_seconds):
                actions.append(Stop(replica.id, "drained"))
        elif replica.state == STOPPED:
            if replica.node is None:
                actions.append(Forget(replica.id, "stopped"))
        else:
            live.append(replica)

    current = [r for r in live if r.spec_hash == deployment.spec_hash]
    old = [r for r in live if r.spec_hash != deployment.spec_hash]
    ready_current = sum(1 for r in current if r.state == READY)
    want = deployment.replicas

    # Keep as many old ready replicas as the new ones cannot serve yet (oldest first);
    # old ones that serve nothing go at once.
    still_needed = max(0, want - ready_current)
    kept_old = 0
    retire_old: list[Action] = []
    for replica in old:
        if replica.state == READY and kept_old < still_needed:
            kept_old += 1
            continue
        retire_old.append(_retire(replica, "replaced by a replica of the new spec"))

    if len(current) < want:
        missing = want - len(current)
        if kept_old:
            missing = min(missing, max(0, want + max_surge - len(current) - kept_old))
        if missing:
            actions.append(Create(deployment.id, missing))
    elif len(current) > want:
        excess = sorted(current, key=lambda r: (_GIVE_UP_ORDER[r.state], -r.created_at, r.id))
        for replica in excess[: len(current) - want]:
            actions.append(_retire(replica, "scaled down"))
    actions += retire_old
    return actions


def plan_reconcile(
    deployments: Iterable[DeploymentView],
    replicas: Iterable[ReplicaView],
    *,
    now: float,
    drain_seconds: float,
    max_surge: int = 1,
) -> list[Action]:
    """Actions that move the actual replicas toward the desired deployments. Replicas
    of a deployment that no longer exists are retired."""
    by_deployment: dict[str, list[ReplicaView]] = {}
    for replica in replicas:
        by_deployment.setdefault(replica.deployment, []).append(replica)
    actions: list[Action] = []
    known = set()
    for deployment in sorted(deployments, key=lambda d: d.id):
        known.add(deployment.id)
        actions += plan_deployment(
            deployment,
            by_deployment.get(deployment.id, []),
            now=now,
            drain_seconds=drain_seconds,
            max_surge=max_surge,
        )
    for deployment_id in sorted(set(by_deployment) - known):
        orphan = DeploymentView(id=deployment_id, replicas=0, spec_hash="")
        actions += [
            a
            for a in plan_deployment(
                orphan, by_deployment[deployment_id], now=now, drain_seconds=drain_seconds
            )
            if not isinstance(a, Create)
        ]
    return actions


# --------------------------------------------------------------------------- reports
def next_state(current: str, reported: str) -> str:
    """The replica state after an agent reports ``reported`` for a replica the control
    plane holds in ``current``. Draining and stopped belong to the control plane: a
    report never undoes them. Pending replicas are not on any node yet."""
    if current in (DRAINING, STOPPED, PENDING):
        return current
    if reported in (STARTING, READY, FAILED):
        return reported
    if reported in (PENDING, PLACED):
        return PLACED if current in (PLACED, STARTING) else current
    # The agent says the process is gone although it is still wanted.
    return FAILED
