"""Capacity belongs to its owner: an organization's deployment serves that organization
only; platform administrators create platform deployments and share them with every
organization or a listed set. The snapshot's routes say who may use them."""

from __future__ import annotations

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import Upstream
from controlplane.catalog.secrets import encrypt_secret
from controlplane.catalog.services import create_upstream, grant_model_access
from controlplane.fleet.models import Deployment, Node, NodeState, Replica, ReplicaState
from controlplane.fleet.services import (
    create_deployment,
    create_node,
    create_pool,
    replica_routes,
    update_deployment,
)
from controlplane.snapshot import build_snapshot
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import create_organization
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from tests.conftest import SYSTEM
from tests.fleet.test_api import check

pytestmark = pytest.mark.django_db
FLEET = "/api/v1/fleet/deployments/"
PLATFORM_PAYLOAD = {"name": "shared-chat", "model": "tiny-chat", "pool": "gpu"}


@pytest.fixture
def fleet(world, sized_model):
    pool = create_pool(actor=SYSTEM, name="gpu")
    node = create_node(actor=SYSTEM, name="gpu-1", pool=pool, address="10.0.0.1")
    Node.objects.filter(pk=node.pk).update(state=NodeState.READY)
    own = create_deployment(
        actor=SYSTEM, organization=world.org_a, name="chat", model="tiny-chat", pool=pool
    )
    return pool, node, own


def ready_replica(deployment: Deployment, node: Node, port: int) -> Replica:
    return Replica.objects.create(
        deployment=deployment,
        node=node,
        port=port,
        endpoint=f"http://10.0.0.1:{port}",
        state=ReplicaState.READY,
        spec_hash=deployment.spec_hash,
        api_key_encrypted=encrypt_secret(f"key-{port}"),
    )


# --------------------------------------------------------------------------- who may
@pytest.mark.parametrize("caller", ["owner_a", "member_a", "viewer_a", "admin_b"])
def test_organization_people_cannot_create_or_list_platform_deployments(caller, clients, fleet):
    check(clients[caller], "post", FLEET, {**PLATFORM_PAYLOAD, "shared_with_all": True}, 403)
    check(clients[caller], "get", FLEET, None, 403)
    check(clients["anonymous"], "get", FLEET, None, 401)


def test_organization_admin_cannot_share_its_deployment(clients, fleet):
    own = fleet[2]
    url = f"/api/v1/organizations/org-a/deployments/{own.pk}/"
    check(clients["owner_a"], "patch", url, {"shared_with_all": True}, 400)
    check(clients["owner_a"], "patch", url, {"shared_with": ["org-b"]}, 400)
    payload = {"name": "other", "model": "tiny-chat", "pool": "gpu", "shared_with_all": True}
    check(clients["owner_a"], "post", "/api/v1/organizations/org-a/deployments/", payload, 400)


def test_organization_admin_cannot_reach_platform_deployments_through_services(world, fleet):
    pool = fleet[0]
    alice = Actor.for_user(world.alice)
    with pytest.raises(PermissionDenied):
        create_deployment(actor=alice, organization=None, name="p", model="tiny-chat", pool=pool)
    platform = create_deployment(
        actor=SYSTEM, organization=None, name="p", model="tiny-chat", pool=pool
    )
    with pytest.raises(PermissionDenied):
        update_deployment(actor=alice, deployment=platform, shared_with_all=True)
    with pytest.raises(PermissionDenied):
        update_deployment(actor=alice, deployment=platform, replicas=0)
    # Sharing an organization's deployment is refused even to a platform administrator.
    with pytest.raises(Exception, match="Only a platform deployment is shared"):
        update_deployment(actor=SYSTEM, deployment=fleet[2], shared_with=[world.org_b])
    platform.refresh_from_db()
    assert not platform.shared_with_all and not platform.shared_with.exists()


def test_the_database_refuses_a_shared_organization_deployment(fleet):
    own = fleet[2]
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.filter(pk=own.pk).update(shared_with_all=True)


def test_platform_admin_creates_shares_and_unshares(clients, world, fleet):
    root = clients["platform_admin"]
    payload = {**PLATFORM_PAYLOAD, "shared_with": ["org-b"], "replicas": 2}
    created = check(root, "post", FLEET, payload, 201).json()
    assert created["shared_with"] == ["org-b"] and created["shared_with_all"] is False
    assert created["model"] == "tiny-chat" and created["replicas"] == 2
    deployment = Deployment.objects.get(pk=created["id"])
    assert deployment.organization is None and str(deployment) == "platform/shared-chat"
    event = AuditEvent.objects.get(action="deployment.create", target_id=created["id"])
    assert event.organization_id is None and event.changes["shared_with"] == [None, ["org-b"]]
    # The model needs no grant to be deployed by the platform (org B has none).
    assert [d["name"] for d in check(root, "get", FLEET, None, 200).json()["results"]] == [
        "shared-chat"
    ]
    check(root, "post", FLEET, PLATFORM_PAYLOAD, 400)  # the name is taken
    check(root, "post", FLEET, {**PLATFORM_PAYLOAD, "name": "x", "shared_with": ["nope"]}, 400)

    url = f"{FLEET}{deployment.pk}/"
    generation = deployment.generation
    body = check(root, "patch", url, {"shared_with_all": True, "shared_with": []}, 200).json()
    assert body["shared_with_all"] is True and body["shared_with"] == []
    assert body["generation"] == generation  # sharing is not a rollout
    event = AuditEvent.objects.filter(action="deployment.update", target_id=str(deployment.pk))
    assert event.get().changes == {
        "shared_with_all": [False, True],
        "shared_with": [["org-b"], []],
    }
    assert check(root, "patch", url, {"replicas": 1}, 200).json()["generation"] == generation + 1
    # Org deployments are not platform deployments, and vice versa.
    check(root, "get", f"{FLEET}{fleet[2].pk}/", None, 404)
    check(root, "get", f"/api/v1/organizations/org-a/deployments/{deployment.pk}/", None, 404)
    check(root, "delete", url, None, 204)
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def test_platform_deployments_ignore_the_per_organization_quota(clients, fleet):
    pool = fleet[0]
    pool.org_gpu_quota = 1
    pool.save()
    root = clients["platform_admin"]
    check(root, "post", FLEET, {**PLATFORM_PAYLOAD, "replicas": 4}, 201)


# --------------------------------------------------------------------------- routes
def test_snapshot_routes_say_who_may_use_them(world, fleet):
    pool, node, own = fleet
    org_c = create_organization(actor=SYSTEM, slug="org-c", name="Org C")
    listed = create_deployment(
        actor=SYSTEM,
        organization=None,
        name="for-b",
        model="tiny-chat",
        pool=pool,
        shared_with=[world.org_b, org_c],
    )
    everyone = create_deployment(
        actor=SYSTEM,
        organization=None,
        name="for-all",
        model="tiny-chat",
        pool=pool,
        shared_with_all=True,
    )
    nobody = create_deployment(
        actor=SYSTEM, organization=None, name="unshared", model="tiny-chat", pool=pool
    )
    replicas = {
        name: ready_replica(deployment, node, port)
        for port, (name, deployment) in enumerate(
            [("own", own), ("listed", listed), ("everyone", everyone), ("nobody", nobody)],
            start=9000,
        )
    }
    create_upstream(
        actor=SYSTEM,
        model=world.model,
        name="outside",
        base_url="http://10.0.0.9:8000",
        served_model_name="tiny",
    )
    a, b, c = (str(org.pk) for org in (world.org_a, world.org_b, org_c))
    snapshot = build_snapshot()
    routes = {r["id"]: r for r in snapshot["models"]["tiny-chat"]["routes"]}
    access = {
        name: (routes[str(r.pk)]["owner"], routes[str(r.pk)]["orgs"])
        for name, r in replicas.items()
    }
    assert access == {
        "own": (a, [a]),
        "listed": (None, sorted([b, c])),
        "everyone": (None, None),
        "nobody": (None, []),
    }
    assert (
        routes["upstream-outside"]["owner"] is None and routes["upstream-outside"]["orgs"] is None
    )
    assert Upstream.objects.count() == 1
    # Who may use the model is still the access list: B has no grant yet.
    assert snapshot["orgs"][b]["models"] == []
    grant_model_access(actor=SYSTEM, organization=world.org_b, model=world.model)
    assert build_snapshot()["orgs"][b]["models"] == ["tiny-chat"]

    # Changing the sharing republishes the routes.
    update_deployment(actor=SYSTEM, deployment=listed, shared_with=[org_c])
    [route] = [r for r in replica_routes()["tiny-chat"] if r["id"] == str(replicas["listed"].pk)]
    assert route["orgs"] == [c]


def test_sharing_changes_publish_the_snapshot(world, fleet, django_capture_on_commit_callbacks):
    from django.db import connection

    platform = create_deployment(
        actor=SYSTEM, organization=None, name="p", model="tiny-chat", pool=fleet[0]
    )
    connection.run_on_commit.clear()
    with django_capture_on_commit_callbacks() as callbacks:
        update_deployment(actor=SYSTEM, deployment=platform, shared_with=[world.org_b])
    assert any(getattr(cb, "__name__", "") == "_publish_quietly" for cb in callbacks)
    with django_capture_on_commit_callbacks() as callbacks:
        update_deployment(actor=SYSTEM, deployment=platform, shared_with=[world.org_b])
    assert callbacks == []  # nothing changed, nothing published
