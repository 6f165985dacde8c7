"""Autoscaling against the real database and Redis, with fake agents: an idle
deployment scales to zero after its delay (draining, an audited decision with its
reason), a held request's demand signal brings a replica back, a burst scales up to
max_replicas, and a draining replica is never a route."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from controlplane.audit.models import AuditEvent
from controlplane.fleet import tasks
from controlplane.fleet.models import Deployment, Node, Replica
from controlplane.fleet.reconciler import handle_node_report
from controlplane.snapshot import build_snapshot
from django.conf import settings
from django.utils import timezone

from gateway import contract
from tests.fleet.conftest import GIB, replica_report, report
from tests.fleet.test_reconciler import deploy, reconcile

pytestmark = pytest.mark.django_db

BUSY = {"num_requests_running": 4.0, "num_requests_waiting": 9.0}
IDLE = {"num_requests_running": 0.0, "num_requests_waiting": 0.0}


@pytest.fixture
def demand():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(contract.DEMAND_PREFIX + "tiny-chat")
    yield client
    client.delete(contract.DEMAND_PREFIX + "tiny-chat")
    client.close()


def report_all(load, now=None, node_name="gpu-1"):
    """The agent's report at ``now`` (simulated time): every replica ready with ``load``."""
    node = Node.objects.get(name=node_name)
    items = [
        replica_report(r, load=load)
        for r in Replica.objects.filter(node=node).exclude(state="stopped")
    ]
    return handle_node_report(
        report(node_name, generation_applied=node.generation_desired, replicas=items), now=now
    )


def tick(t0, seconds, load):
    """A heartbeat with ``load`` at t0 + seconds, then a reconciler pass then."""
    now = t0 + dt.timedelta(seconds=seconds)
    report_all(load, now)
    reconcile(now)


def routes():
    return build_snapshot()["models"]["tiny-chat"]["routes"]


def decisions():
    return list(
        AuditEvent.objects.filter(action="deployment.autoscale")
        .order_by("seq")
        .values_list("changes", flat=True)
    )


def test_idle_to_zero_then_back_on_demand_then_up_on_a_burst(
    world, pool, sized_model, sent, demand
):
    tasks.node_report(report("gpu-1", gpus=(80 * GIB,) * 4))
    deployment = deploy(
        world, pool, replicas=1, min_replicas=0, max_replicas=2, scale_down_delay_seconds=60
    )
    assert build_snapshot()["models"]["tiny-chat"]["cold_start"] is True
    t0 = timezone.now()
    reconcile(t0)
    report_all(IDLE)
    assert len(routes()) == 1

    # idle, but not for the whole delay yet: nothing changes
    tick(t0, 30, IDLE)
    assert Deployment.objects.get().replicas == 1 and decisions() == []
    # past the delay: to zero, draining first (it leaves the routes at once)
    tick(t0, 61, IDLE)
    deployment.refresh_from_db()
    assert deployment.replicas == 0
    assert decisions()[-1]["replicas"] == [1, 0] and "idle" in decisions()[-1]["reason"][1]
    assert Replica.objects.get().state == "draining"
    assert routes() == []  # a draining replica is never chosen for new work
    tick(t0, 64, IDLE)  # drained (idle past the minimum drain): stopped
    assert Replica.objects.get().state == "stopped"
    tick(t0, 65, IDLE)  # the agent confirms: forgotten
    tick(t0, 66, IDLE)

    # a gateway holds a request: the demand signal wakes the deployment
    demand.set(
        contract.DEMAND_PREFIX + "tiny-chat", repr((t0 + dt.timedelta(seconds=66)).timestamp())
    )
    tick(t0, 67, IDLE)
    deployment.refresh_from_db()
    assert deployment.replicas == 1 and "waiting" in decisions()[-1]["reason"][1]
    tick(t0, 68, IDLE)  # placed, then reported ready
    tick(t0, 69, IDLE)
    assert len(routes()) == 1

    # a burst above the target: up to max_replicas, never past it
    tick(t0, 70, BUSY)
    deployment.refresh_from_db()
    assert deployment.replicas == 2 and "above the target" in decisions()[-1]["reason"][1]
    for second in range(71, 75):
        tick(t0, second, BUSY)
    assert Deployment.objects.get().replicas == 2
    assert len(routes()) == 2
    assert [d["replicas"] for d in decisions()] == [[1, 0], [0, 1], [1, 2]]


def test_autoscaling_needs_both_bounds_and_clamps_the_count(world, pool, sized_model):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as err:
        deploy(world, pool, min_replicas=1)
    assert "max_replicas" in err.value.message_dict
    deployment = deploy(world, pool, replicas=5, min_replicas=0, max_replicas=2)
    assert deployment.replicas == 2


def test_a_replica_that_just_became_ready_gets_the_whole_delay(world, pool, sized_model, sent):
    """A cold start longer than the delay: the new replica's first (idle) load report
    must not take the deployment straight back to zero."""
    tasks.node_report(report("gpu-1", gpus=(80 * GIB,) * 4))
    deploy(world, pool, replicas=1, min_replicas=0, max_replicas=2, scale_down_delay_seconds=60)
    t0 = timezone.now()
    reconcile(t0)
    node = Node.objects.get(name="gpu-1")
    for second in (30, 60, 90):  # still loading the model
        now = t0 + dt.timedelta(seconds=second)
        items = [replica_report(r, state="starting") for r in Replica.objects.all()]
        handle_node_report(
            report("gpu-1", generation_applied=node.generation_desired, replicas=items), now=now
        )
        reconcile(now)
    tick(t0, 100, IDLE)  # ready at last
    tick(t0, 130, IDLE)  # 130 s after the last change, 30 s after becoming ready
    assert Deployment.objects.get().replicas == 1 and decisions() == []
    tick(t0, 161, IDLE)  # idle for the whole delay since it became ready
    assert Deployment.objects.get().replicas == 0
