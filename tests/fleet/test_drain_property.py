"""A draining replica is never chosen for new work, whatever happens around it.

Two properties:

* The reconciler's pure decisions (``plan_deployment``) and the report rule
  (``next_state``), driven through random sequences of scaling, spec changes, agent
  reports (stale, contradictory or late), lost nodes and time: once a replica has been
  told to drain it is never ready again (only stopped or forgotten), so it can never
  re-enter the routes.
* The routes the gateways receive (``replica_routes``, from the database) hold exactly
  the ready replicas on live nodes, for random mixes of replica and node states: a
  draining, stopped or failed replica, or one on a lost node, is never routed to.
"""

from __future__ import annotations

import itertools

import pytest
from controlplane.fleet.models import Node, Replica, ReplicaState
from controlplane.fleet.reconcile import (
    DRAINING,
    FAILED,
    PENDING,
    PLACED,
    READY,
    STARTING,
    STOPPED,
    Create,
    DeploymentView,
    Drain,
    Forget,
    ReplicaView,
    Stop,
    next_state,
    plan_deployment,
)
from controlplane.fleet.services import create_deployment
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SYSTEM

REPORTED = (PENDING, PLACED, STARTING, READY, FAILED, STOPPED, "gone")

step_st = st.one_of(
    st.tuples(st.just("scale"), st.integers(0, 4)),
    st.tuples(st.just("spec"), st.sampled_from(["s1", "s2", "s3"])),
    st.just(("place",)),  # the scheduler places every pending replica
    st.just(("all-ready",)),  # the agent reports every replica on its node ready
    st.tuples(st.just("report"), st.integers(0, 3), st.sampled_from(REPORTED)),
    st.tuples(st.just("idle"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("lose"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.floats(0.0, 40.0)),
)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(step_st, min_size=8, max_size=60))
@example(  # scaled to zero while serving, then a late "ready" report
    steps=[
        ("place",),
        ("all-ready",),
        ("scale", 0),
        ("report", 0, READY),
    ]
)
def test_a_drained_replica_never_becomes_routable_again(steps):
    now = 1_000.0
    want, spec = 2, "s1"
    replicas: dict[str, dict] = {}  # id -> fields of a ReplicaView
    drained: set[str] = set()
    ids = (f"r{i}" for i in itertools.count())

    def check():
        """What drained stays out of the routes (which hold the ready replicas)."""
        for rid in drained & set(replicas):
            assert replicas[rid]["state"] in (DRAINING, STOPPED), (rid, replicas[rid])
        routable = {rid for rid, r in replicas.items() if r["state"] == READY}
        assert not routable & drained

    def nth(i):
        keys = sorted(replicas)
        return replicas[keys[i % len(keys)]] if keys else None

    for step in steps:
        kind = step[0]
        if kind == "scale":
            want = step[1]
        elif kind == "spec":
            spec = step[1]
        elif kind == "tick":
            now += step[1]
        elif kind == "place":
            for r in replicas.values():
                if r["state"] == PENDING:
                    r.update(state=PLACED, node="n1")
        elif kind == "all-ready":
            for r in replicas.values():
                if r["node"] is not None:
                    r["state"] = next_state(r["state"], READY)
        elif (r := nth(step[1])) is not None and kind == "report":
            reported = step[2]
            if reported == "gone":  # the agent no longer runs it
                if r["state"] == STOPPED:
                    r["node"] = None
                elif r["node"] is not None:
                    r["state"] = next_state(r["state"], STOPPED)
            elif r["node"] is not None:  # agents report only what is on their node
                r["state"] = next_state(r["state"], reported)
        elif r is not None and kind == "idle":
            running = 0.0 if step[2] else 3.0
            r["load"] = {"num_requests_running": running, "num_requests_waiting": 0.0}
        elif r is not None and kind == "lose":
            r["node_lost"] = r["node"] is not None
        check()  # the routes are rebuilt on every change, before any reconcile pass
        # The reconciler runs after every event, as its periodic pass would.
        views = [ReplicaView(**fields) for fields in replicas.values()]
        deployment = DeploymentView(id="d", replicas=want, spec_hash=spec)
        for action in plan_deployment(deployment, views, now=now, drain_seconds=30):
            if isinstance(action, Create):
                for _ in range(action.count):
                    new = next(ids)
                    replicas[new] = dict(
                        id=new,
                        deployment="d",
                        spec_hash=spec,
                        state=PENDING,
                        created_at=now,
                        node=None,
                        node_lost=False,
                        drain_started_at=None,
                        load={},
                    )
                continue
            target = replicas[action.replica]
            if isinstance(action, Drain):
                assert target["state"] == READY  # only a serving replica drains
                target.update(state=DRAINING, drain_started_at=now)
                drained.add(action.replica)
            elif isinstance(action, Stop):
                target["state"] = STOPPED
            elif isinstance(action, Forget):
                del replicas[action.replica]
        check()


REPLICA_STATES = [s.value for s in ReplicaState]
NODE_STATES = [s for s, _ in Node._meta.get_field("state").choices]


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mix=st.lists(
        st.tuples(st.sampled_from(REPLICA_STATES), st.sampled_from(NODE_STATES)),
        min_size=1,
        max_size=8,
    )
)
def test_routes_hold_only_ready_replicas_on_live_nodes(world, pool, sized_model, mix):
    from controlplane.fleet.services import replica_routes

    with transaction.atomic():
        deployment = create_deployment(
            actor=SYSTEM,
            organization=world.org_a,
            pool=pool,
            name="prop",
            model="tiny-chat",
            replicas=0,
        )
        expected = set()
        for i, (state, node_state) in enumerate(mix):
            node = Node.objects.create(
                name=f"prop-{i}", pool=pool, state=node_state, address=f"10.9.0.{i + 1}"
            )
            replica = Replica.objects.create(
                deployment=deployment,
                node=node,
                port=8000 + i,
                endpoint=f"http://10.9.0.{i + 1}:{8000 + i}",
                state=state,
                spec_hash="x",
            )
            if state == ReplicaState.READY and node_state in ("ready", "cordoned"):
                expected.add(str(replica.pk))
        routed = {r["id"] for r in replica_routes().get("tiny-chat", [])}
        assert routed == expected
        transaction.set_rollback(True)  # each example starts from the same database
