"""The reconciler's pure decisions."""

from __future__ import annotations

from controlplane.fleet.reconcile import (
    Create,
    DeploymentView,
    Drain,
    Forget,
    ReplicaView,
    Stop,
    next_state,
    plan_deployment,
    plan_reconcile,
)

NOW = 1_000_000.0


def dep(replicas=2, spec="new"):
    return DeploymentView(id="d", replicas=replicas, spec_hash=spec)


def rep(id, state="ready", spec="new", created=0.0, node="n1", **kw):
    return ReplicaView(
        id=id, deployment="d", spec_hash=spec, state=state, created_at=created, node=node, **kw
    )


def plan(deployment, replicas, drain=30):
    return plan_deployment(deployment, replicas, now=NOW, drain_seconds=drain)


def test_creates_missing_replicas():
    assert plan(dep(3), [rep("a")]) == [Create("d", 2)]
    assert plan(dep(2), [rep("a"), rep("b")]) == []


def test_scale_down_drains_newest_first_and_unplaced_before_serving():
    replicas = [rep("old", created=1), rep("mid", created=2), rep("new", created=3)]
    assert plan(dep(1), replicas) == [Drain("new", "scaled down"), Drain("mid", "scaled down")]
    replicas.append(rep("pending", state="pending", node=None, created=0))
    assert plan(dep(2), replicas) == [Forget("pending", "scaled down"), Drain("new", "scaled down")]
    starting = [rep("a", created=1), rep("b", state="starting", created=0)]
    assert plan(dep(1), starting) == [Stop("b", "scaled down")]


def test_rolling_update_surges_one_and_keeps_old_until_new_is_ready():
    old = [rep("o1", spec="old", created=1), rep("o2", spec="old", created=2)]
    # step 1: one new replica (surge 1), both old keep serving
    assert plan(dep(2), old) == [Create("d", 1)]
    # step 2: the new one is still starting: nothing more
    step2 = [*old, rep("n1", state="starting", created=3)]
    assert plan(dep(2), step2) == []
    # step 3: it is ready: the newer old one drains (the oldest is kept) and, with room
    # under the surge again, the second new replica is created
    step3 = [*old, rep("n1", created=3)]
    actions = plan(dep(2), step3)
    assert actions == [Create("d", 1), Drain("o2", "replaced by a replica of the new spec")]
    # step 4: o2 draining, the second new one starting: o1 keeps serving
    step4 = [
        old[0],
        rep("o2", spec="old", state="draining", drain_started_at=NOW),
        rep("n1"),
        rep("n2", state="starting"),
    ]
    assert plan(dep(2), step4) == []
    # step 5: both new ready: the last old one drains
    step5 = [old[0], rep("n1"), rep("n2")]
    assert plan(dep(2), step5) == [Drain("o1", "replaced by a replica of the new spec")]


def test_old_replicas_that_serve_nothing_go_at_once():
    replicas = [
        rep("o1", spec="old", state="failed"),
        rep("o2", spec="old", state="pending", node=None),
    ]
    actions = plan(dep(1), replicas)
    assert Stop("o1", "replaced by a replica of the new spec") in actions
    assert Forget("o2", "replaced by a replica of the new spec") in actions
    assert Create("d", 1) in actions


def test_drain_ends_after_the_drain_time_or_when_idle():
    busy = {"num_requests_running": 2.0, "num_requests_waiting": 0.0}
    idle = {"num_requests_running": 0.0, "num_requests_waiting": 0.0}
    draining = rep("x", state="draining", drain_started_at=NOW - 5, load=busy)
    assert plan(dep(0), [draining]) == []
    assert plan(dep(0), [draining], drain=5) == [Stop("x", "drained")]
    quiet = rep("x", state="draining", drain_started_at=NOW - 5, load=idle)
    assert plan(dep(0), [quiet]) == [Stop("x", "drained")]
    just_started = rep("x", state="draining", drain_started_at=NOW - 1, load=idle)
    assert plan(dep(0), [just_started]) == []  # the gateways need a moment


def test_lost_node_replicas_are_forgotten_and_replaced():
    replicas = [rep("a", node_lost=True, node="n9"), rep("b")]
    assert plan(dep(2), replicas) == [Forget("a", "node n9 was lost"), Create("d", 1)]


def test_orphans_of_deleted_deployments_are_retired_and_never_recreated():
    replicas = [rep("a"), rep("b", state="placed")]
    actions = plan_reconcile([], replicas, now=NOW, drain_seconds=30)
    assert {type(a) for a in actions} == {Drain, Stop}


def test_plan_is_idempotent_once_converged():
    converged = [rep("a"), rep("b")]
    assert plan(dep(2), converged) == []
    assert plan(dep(2), converged) == []


def test_next_state_never_undoes_control_plane_states():
    assert next_state("draining", "ready") == "draining"
    assert next_state("stopped", "ready") == "stopped"
    assert next_state("pending", "ready") == "pending"
    assert next_state("placed", "starting") == "starting"
    assert next_state("starting", "ready") == "ready"
    assert next_state("ready", "failed") == "failed"
    assert next_state("ready", "stopped") == "failed"
    assert next_state("starting", "placed") == "placed"
