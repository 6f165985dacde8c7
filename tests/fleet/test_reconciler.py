"""The reconciler and the node-report task against the real database, with fake agents."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.secrets import decrypt_secret
from controlplane.fleet import tasks
from controlplane.fleet.models import Node, Replica
from controlplane.fleet.services import create_deployment, update_deployment
from controlplane.snapshot import build_snapshot
from django.test import TestCase
from django.utils import timezone

from tests.conftest import SYSTEM
from tests.fleet.conftest import GIB, replica_report, report
from workers import protocol

pytestmark = pytest.mark.django_db


def reconcile(now=None):
    """One pass, with its on-commit sends executed (the test transaction never commits)."""
    from controlplane.fleet.reconciler import reconcile_once

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert reconcile_once(now=now)


def deploy(world, pool, **fields):
    fields.setdefault("name", "chat")
    fields.setdefault("model", "tiny-chat")
    return create_deployment(actor=SYSTEM, organization=world.org_a, pool=pool, **fields)


def ready_all(node_name="gpu-1", **kw):
    node = Node.objects.get(name=node_name)
    items = [replica_report(r) for r in Replica.objects.filter(node=node)]
    return tasks.node_report(
        report(node_name, generation_applied=node.generation_desired, replicas=items, **kw)
    )


def routes():
    return build_snapshot()["models"]["tiny-chat"]["routes"]


def test_report_of_registered_node_places_replicas(world, pool, sized_model, sent):
    assert tasks.node_report(report("gpu-1", gpus=(80 * GIB, 80 * GIB))) == "applied"
    node = Node.objects.get(name="gpu-1")
    assert node.state == "ready" and len(node.inventory["gpus"]) == 2
    assert AuditEvent.objects.filter(action="node.create", target_id=str(node.pk)).exists()
    deployment = deploy(world, pool, replicas=2)
    reconcile()
    replicas = list(Replica.objects.filter(deployment=deployment))
    assert [r.state for r in replicas] == ["placed", "placed"]
    assert all(
        r.node == node and r.port and r.endpoint.startswith("http://10.0.0.1:") for r in replicas
    )
    assert len({r.port for r in replicas}) == 2
    # the node got its whole desired state, with keys and a generation
    assert len(sent) == 1
    state = sent[0]
    assert state["node"] == "gpu-1" and state["generation"] == 1
    assert state["protocol"] == protocol.PROTOCOL_VERSION
    specs = {s["id"]: s for s in state["replicas"]}
    assert set(specs) == {str(r.pk) for r in replicas}
    spec = specs[str(replicas[0].pk)]
    assert spec["api_key"] == decrypt_secret(replicas[0].api_key_encrypted)
    assert spec["task"] == "generate" and spec["max_model_len"] == 2048
    assert spec["trust_remote_code"] is False
    assert spec["source"] == {"type": "local", "path": "/models/tiny-chat", "sha256_manifest": {}}
    assert 0 < spec["engine_args"]["gpu_memory_utilization"] < 0.2
    assert spec["spec_hash"] == deployment.spec_hash
    # nothing routes to them until they are ready
    assert routes() == []


def test_level_triggered_resend_until_applied_and_no_generation_churn(
    world, pool, sized_model, sent
):
    tasks.node_report(report("gpu-1"))
    deploy(world, pool)
    reconcile()
    reconcile()  # the agent has not applied generation 1 yet: sent again, same generation
    assert [s["generation"] for s in sent] == [1, 1]
    ready_all()
    reconcile()  # applied and nothing changed: nothing sent
    assert len(sent) == 2


def test_agent_that_lost_its_replicas_gets_its_state_again(world, pool, sized_model, sent):
    """An agent restarted with stop-on-exit reports the newest generation but no
    replicas: the whole state goes out again under a new generation."""
    tasks.node_report(report("gpu-1"))
    deploy(world, pool)
    reconcile()
    ready_all()
    reconcile()
    assert [s["generation"] for s in sent] == [1]
    node = Node.objects.get(name="gpu-1")
    tasks.node_report(report("gpu-1", generation_applied=node.generation_desired, replicas=[]))
    reconcile()
    assert [s["generation"] for s in sent] == [1, 2]
    assert {r["id"] for r in sent[-1]["replicas"]} == {
        str(r.pk) for r in Replica.objects.filter(node=node)
    }


def test_ready_replicas_enter_the_routes_and_failed_ones_leave(world, pool, sized_model, sent):
    tasks.node_report(report("gpu-1"))
    deploy(world, pool)
    reconcile()
    replica = Replica.objects.get()
    seq = AuditEvent.objects.order_by("-seq").first().seq
    tasks.node_report(
        report("gpu-1", generation_applied=1, replicas=[replica_report(replica, "starting")])
    )
    assert routes() == []
    tasks.node_report(report("gpu-1", generation_applied=1, replicas=[replica_report(replica)]))
    [route] = routes()
    assert route["id"] == str(replica.pk) and route["url"] == replica.endpoint
    assert route["api_key"] == decrypt_secret(replica.api_key_encrypted) and not route["external"]
    assert AuditEvent.objects.filter(action="replica.route_add", seq__gt=seq).exists()
    tasks.node_report(
        report(
            "gpu-1",
            generation_applied=1,
            replicas=[replica_report(replica, "failed", last_error="CUDA OOM", restarts=3)],
        )
    )
    replica.refresh_from_db()
    assert replica.state == "failed" and replica.last_error == "CUDA OOM" and replica.restarts == 3
    assert routes() == []


def test_stale_report_does_not_undo_newer_state(world, pool, sized_model):
    tasks.node_report(report("gpu-1", sent_at=100.0))
    deploy(world, pool)
    reconcile()
    replica = Replica.objects.get()
    tasks.node_report(
        report("gpu-1", sent_at=200.0, generation_applied=1, replicas=[replica_report(replica)])
    )
    old = report(
        "gpu-1", sent_at=150.0, generation_applied=0, replicas=[replica_report(replica, "starting")]
    )
    assert tasks.node_report(old) == "stale"
    assert tasks.node_report(json.loads(json.dumps(old))) == "stale"
    replica.refresh_from_db()
    node = Node.objects.get()
    assert replica.state == "ready" and node.generation_applied == 1
    # a report for another incarnation (other spec hash) changes nothing either
    tasks.node_report(
        report(
            "gpu-1", sent_at=300.0, replicas=[replica_report(replica, "failed", spec_hash="x" * 64)]
        )
    )
    replica.refresh_from_db()
    assert replica.state == "ready"


def test_invalid_reports_are_dropped(world, pool):
    assert tasks.node_report({"node": "x"}) == "invalid"
    assert tasks.node_report(report("gpu-1", sign=False)) == "refused: unsigned"
    bad = report("gpu-1", sign=False)
    bad["inventory"]["gpus"] = [{"index": "0"}]
    assert tasks.node_report(bad) == "invalid"
    assert not Node.objects.exists()


def test_lost_node_replicas_are_replaced_elsewhere(world, pool, sized_model, sent):
    tasks.node_report(report("gpu-1"))
    tasks.node_report(report("gpu-2", address="10.0.0.2"))
    deploy(world, pool, replicas=1)
    reconcile()
    replica = Replica.objects.get()
    first = replica.node.name
    tasks.node_report(report(first, generation_applied=1, replicas=[replica_report(replica)]))
    assert len(routes()) == 1
    other = "gpu-2" if first == "gpu-1" else "gpu-1"
    later = timezone.now() + dt.timedelta(seconds=protocol.NODE_LOST_AFTER_SECONDS + 5)
    Node.objects.filter(name=other).update(last_heartbeat=later)  # only `first` goes silent
    reconcile(now=later)
    assert Node.objects.get(name=first).state == "lost"
    [moved] = Replica.objects.all()
    assert moved.pk != replica.pk and moved.node.name == other and moved.state == "placed"
    assert routes() == []
    assert AuditEvent.objects.filter(action="node.lost").exists()
    assert AuditEvent.objects.filter(
        action="replica.route_remove", target_id=str(replica.pk)
    ).exists()
    # the lost node comes back: it is ready again, and its desired state is empty
    tasks.node_report(report(first, replicas=[replica_report(replica)]))
    assert Node.objects.get(name=first).state == "ready"
    Node.objects.update(last_heartbeat=later)
    reconcile(now=later)
    assert [s for s in sent if s["node"] == first][-1]["replicas"] == []


def test_rolling_update_keeps_serving_until_new_replica_is_ready(
    world, pool, sized_model, sent, settings
):
    tasks.node_report(report("gpu-1", gpus=(80 * GIB, 80 * GIB)))
    deployment = deploy(world, pool, replicas=1)
    reconcile()
    ready_all()
    old = Replica.objects.get()
    deployment = update_deployment(actor=SYSTEM, deployment=deployment, max_model_len=1024)
    assert deployment.spec_hash != old.spec_hash and deployment.generation == 2
    reconcile()
    new = Replica.objects.exclude(pk=old.pk).get()
    assert new.spec_hash == deployment.spec_hash and new.state == "placed"
    old.refresh_from_db()
    assert old.state == "ready"
    assert [r["id"] for r in routes()] == [str(old.pk)]  # old serves during the update
    ready_all()
    reconcile()
    old.refresh_from_db()
    assert old.state == "draining"
    assert [r["id"] for r in routes()] == [str(new.pk)]  # traffic moved at once
    assert str(old.pk) in {s["id"] for s in sent[-1]["replicas"]}  # still running, draining
    # after the drain time it leaves the node's desired state, then is forgotten
    later = timezone.now() + dt.timedelta(seconds=60)
    tasks.node_report(
        report(
            "gpu-1",
            generation_applied=Node.objects.get().generation_desired,
            replicas=[replica_report(old), replica_report(new)],
        )
    )
    Node.objects.update(last_heartbeat=later)
    reconcile(now=later)
    old.refresh_from_db()
    assert (
        old.state == "stopped"
        and old.removed_at_generation == Node.objects.get().generation_desired
    )
    assert str(old.pk) not in {s["id"] for s in sent[-1]["replicas"]}
    node = Node.objects.get()
    tasks.node_report(
        report("gpu-1", generation_applied=node.generation_desired, replicas=[replica_report(new)])
    )
    assert list(Replica.objects.all()) == [new]


def test_scale_up_and_down(world, pool, sized_model, sent):
    tasks.node_report(report("gpu-1", gpus=(80 * GIB,) * 4))
    deployment = deploy(world, pool, replicas=1)
    reconcile()
    ready_all()
    deployment = update_deployment(actor=SYSTEM, deployment=deployment, replicas=3)
    assert deployment.spec_hash == Replica.objects.get().spec_hash  # scaling is no rollout
    reconcile()
    ready_all()
    assert Replica.objects.filter(state="ready").count() == 3
    newest = Replica.objects.order_by("-created_at").first()
    update_deployment(actor=SYSTEM, deployment=deployment, replicas=2)
    reconcile()
    newest.refresh_from_db()
    assert newest.state == "draining"
    assert len(routes()) == 2


def test_unplaceable_replica_shows_the_reason(world, pool, sized_model):
    tasks.node_report(report("gpu-1", gpus=(8 * GIB,)))
    deploy(world, pool, tensor_parallel_size=2)
    reconcile()
    replica = Replica.objects.get()
    assert replica.state == "pending" and replica.node is None
    assert "tensor_parallel_size 2" in replica.placement_reason


def test_cordoned_node_gets_no_new_replicas(world, pool, sized_model):
    from controlplane.fleet.services import set_cordoned

    tasks.node_report(report("gpu-1"))
    set_cordoned(actor=SYSTEM, node=Node.objects.get(), cordoned=True)
    tasks.node_report(report("gpu-1"))  # a heartbeat does not uncordon
    assert Node.objects.get().state == "cordoned"
    deploy(world, pool)
    reconcile()
    assert "cordoned" in Replica.objects.get().placement_reason


def test_deleting_a_deployment_removes_routes_and_empties_the_node(world, pool, sized_model, sent):
    from controlplane.fleet.services import delete_deployment

    tasks.node_report(report("gpu-1"))
    deployment = deploy(world, pool)
    reconcile()
    ready_all()
    assert len(routes()) == 1
    delete_deployment(actor=SYSTEM, deployment=deployment)
    assert routes() == []
    reconcile()
    assert sent[-1]["replicas"] == []


def test_celery_wiring_matches_the_protocol(settings):
    from controlplane.celery import app

    assert tasks.node_report.name == protocol.TASK_NODE_REPORT
    assert {"fleet.reconcile", "fleet.fetch_artifact", protocol.TASK_NODE_REPORT} <= set(app.tasks)
    beat = settings.CELERY_BEAT_SCHEDULE["fleet-reconcile"]
    assert beat["task"] == "fleet.reconcile" and beat["options"]["queue"] == protocol.FLEET_QUEUE
    assert beat["schedule"] < protocol.HEARTBEAT_SECONDS


def test_report_task_runs_through_celery_eagerly(world, pool, settings):
    from controlplane.celery import app

    app.conf.task_always_eager = True
    try:
        result = tasks.node_report.apply_async(args=[report("gpu-7")], queue=protocol.FLEET_QUEUE)
        assert result.get() == "applied"
    finally:
        app.conf.task_always_eager = False
    assert Node.objects.get(name="gpu-7").state == "ready"
