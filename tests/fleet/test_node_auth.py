"""Authenticated node agents: administrators register nodes (a credential shown once,
stored encrypted), agents sign their reports, and a report that is unsigned, forged,
for another node, of an unknown node or from another address changes nothing, is
counted and audited (rate-limited)."""

from __future__ import annotations

import os
import stat
import time

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.secrets import decrypt_secret
from controlplane.fleet import node_auth, tasks
from controlplane.fleet.models import Node
from controlplane.fleet.services import create_node
from controlplane.redis import get_redis
from django.core.management import call_command

from tests.conftest import SYSTEM
from tests.fleet.conftest import report
from workers import protocol

pytestmark = pytest.mark.django_db
NODES = "/api/v1/fleet/nodes/"


@pytest.fixture(autouse=True)
def fresh_audit_windows():
    """The refusal audit's rate-limit keys live in Redis; each test starts clean."""
    client = get_redis()
    pattern = "sap:fleet:refusal-audited:*"
    for key in client.scan_iter(pattern):
        client.delete(key)
    yield
    for key in client.scan_iter(pattern):
        client.delete(key)


def node_fields(name: str) -> dict:
    """What a report may change, and what it must never change."""
    node = Node.objects.get(name=name)
    return {
        field: getattr(node, field)
        for field in (
            "address",
            "pool_id",
            "state",
            "last_heartbeat",
            "last_report_sent_at",
            "inventory",
            "reported_labels",
            "generation_applied",
            "agent_version",
        )
    }


def refusals(name: str, reason: str | None = None):
    events = AuditEvent.objects.filter(action="fleet.node.report_refused", target_id__in=[name])
    node = Node.objects.filter(name=name).first()
    if node is not None:
        events = AuditEvent.objects.filter(
            action="fleet.node.report_refused", target_id=str(node.pk)
        )
    if reason is not None:
        events = [e for e in events if e.changes["reason"][1] == reason]
    return list(events)


def register(name="gpu-1", address="10.0.0.1", pool=None):
    from controlplane.fleet.models import Pool

    return node_auth.register_node(
        actor=SYSTEM, name=name, pool=pool or Pool.objects.get(name="gpu"), address=address
    )


def signed(body: dict, secret: str) -> dict:
    return protocol.sign_report(body, secret)


# --------------------------------------------------------------------------- registration
def test_admin_registers_a_node_over_rest_and_sees_its_credential_once(clients, pool):
    admin = clients["platform_admin"]
    response = admin.post(
        NODES, {"name": "gpu-7", "pool": "gpu", "address": "10.0.0.7"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["credential"]
    assert secret.startswith(node_auth.SECRET_PREFIX) and len(secret) > 40
    node = Node.objects.get(name="gpu-7")
    assert secret not in node.credential_encrypted  # encrypted at rest
    assert decrypt_secret(node.credential_encrypted) == secret
    assert body["credential_issued_at"] and body["refused_reports"] == 0
    for url in (NODES, NODES + "gpu-7/"):
        assert secret not in admin.get(url).content.decode()
        assert 'credential"' not in admin.get(url).content.decode()
    assert AuditEvent.objects.filter(
        action="node.credential_issue", target_id=str(node.pk)
    ).exists()
    # its agent's report is applied
    gpu7 = report("gpu-7", sign=False, address="10.0.0.7")
    assert tasks.node_report(signed(gpu7, secret)) == "applied"
    assert Node.objects.get(name="gpu-7").state == "ready"


def test_registration_needs_an_address(clients, pool):
    response = clients["platform_admin"].post(
        NODES, {"name": "gpu-7", "pool": "gpu"}, format="json"
    )
    assert response.status_code == 400
    assert "address" in response.json()["error"]["fields"]
    assert not Node.objects.filter(name="gpu-7").exists()


def test_rotation_over_rest_replaces_the_credential(clients, pool):
    _node, old = register()
    assert tasks.node_report(signed(report(sign=False), old)) == "applied"
    url = NODES + "gpu-1/rotate-credential/"
    assert clients["owner_a"].post(url).status_code == 403
    response = clients["platform_admin"].post(url)
    assert response.status_code == 200
    new = response.json()["credential"]
    assert new != old and decrypt_secret(Node.objects.get().credential_encrypted) == new
    assert tasks.node_report(signed(report(sign=False), old)) == "refused: bad_signature"
    assert tasks.node_report(signed(report(sign=False), new)) == "applied"
    assert AuditEvent.objects.filter(action="node.credential_rotate").count() == 1


def test_register_and_rotate_commands(pool, tmp_path, capsys):
    call_command("register_node", "gpu-3", "--pool", "gpu", "--address", "10.0.0.3")
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("AGENT_NODE_SECRET=")
    secret = printed.split("=", 1)[1]
    assert tasks.node_report(signed(report("gpu-3", sign=False, address="10.0.0.3"), secret))
    path = tmp_path / "node.secret"
    call_command("rotate_node_credential", "gpu-3", "--secret-file", str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    rotated = path.read_text().strip()
    assert rotated != secret
    assert decrypt_secret(Node.objects.get(name="gpu-3").credential_encrypted) == rotated


# --------------------------------------------------------------------------- refusals
def test_unknown_nodes_do_not_register_themselves(pool):
    body = report("ghost", sign=False)
    assert tasks.node_report(signed(body, "any-secret")) == "refused: unknown_node"
    other = report("ghost-2", sign=False)
    assert tasks.node_report(signed(other, "any-secret")) == "refused: unknown_node"
    assert tasks.node_report(body) == "refused: unsigned"
    assert not Node.objects.exists()
    # one audit event per reason: unknown names (the sender's choice) share a window
    events = AuditEvent.objects.filter(action="fleet.node.report_refused")
    assert sorted(e.changes["reason"][1] for e in events) == ["unknown_node", "unsigned"]
    assert {e.target_id for e in events} == {"ghost"}


@pytest.mark.parametrize(
    "forge, reason",
    [
        ("unsigned", "unsigned"),
        ("wrong_secret", "bad_signature"),
        ("tampered", "bad_signature"),
        ("other_node", "wrong_node"),
        ("new_address", "address_changed"),
        ("no_credential", "no_credential"),
    ],
)
def test_refused_report_changes_nothing_and_is_counted_and_audited(pool, forge, reason):
    _node, secret = register("gpu-1")
    _, other_secret = register("gpu-2", address="10.0.0.2")
    assert tasks.node_report(signed(report("gpu-1", sign=False), secret)) == "applied"
    before = node_fields("gpu-1")
    charged = "gpu-1"
    body = report("gpu-1", sign=False, gpus=(1, 2, 3), labels={"evil": "yes"})
    body["generation_applied"] = 99
    if forge == "unsigned":
        forged = body
    elif forge == "wrong_secret":
        forged = signed(body, other_secret)
    elif forge == "tampered":
        forged = signed(body, secret)
        forged["generation_applied"] = 100
    elif forge == "other_node":
        # gpu-2's agent signs with its own secret but speaks for gpu-1
        forged = {**body, "signed_by": "gpu-2"}
        forged["signature"] = protocol.report_signature(forged, other_secret)
        charged = "gpu-2"
    elif forge == "new_address":
        forged = signed({**body, "address": "203.0.113.9"}, secret)
    else:
        Node.objects.filter(name="gpu-1").update(credential_encrypted="")
        forged = signed(body, secret)
    assert tasks.node_report(forged) == f"refused: {reason}"
    assert node_fields("gpu-1") == before
    assert Node.objects.get(name=charged).refused_reports == 1
    [event] = refusals(charged, reason)
    assert event.actor_label and event.changes["node"] == [None, "gpu-1"]
    if forge == "new_address":
        assert event.changes["address"] == ["10.0.0.1", "203.0.113.9"]


def test_a_flood_is_counted_but_audited_once_per_node_and_reason(pool):
    _, secret = register("gpu-1")
    for _ in range(20):
        assert tasks.node_report(signed(report(sign=False), "wrong")) == "refused: bad_signature"
    for _ in range(5):
        assert tasks.node_report(report(sign=False)) == "refused: unsigned"
    assert Node.objects.get().refused_reports == 25
    assert len(refusals("gpu-1", "bad_signature")) == 1
    assert len(refusals("gpu-1", "unsigned")) == 1
    # still heard: a good report is applied
    assert tasks.node_report(signed(report(sign=False), secret)) == "applied"
    assert Node.objects.get().refused_reports == 25


def test_a_report_never_changes_the_registered_address(clients, pool):
    _, secret = register("gpu-1")
    moved = signed(report(sign=False, address="10.9.9.9"), secret)
    assert tasks.node_report(moved) == "refused: address_changed"
    assert Node.objects.get().address == "10.0.0.1"
    # the administrator may move it; then reports from the new address are applied
    response = clients["platform_admin"].patch(
        NODES + "gpu-1/", {"address": "10.9.9.9"}, format="json"
    )
    assert response.status_code == 200 and response.json()["refused_reports"] == 1
    again = signed(report(sign=False, address="10.9.9.9"), secret)
    assert tasks.node_report(again) == "applied"


def test_a_node_in_a_pod_network_moves_only_within_it(clients, pool):
    """A Kubernetes agent pod gets a new IP when it restarts: an address network
    registered by the administrator lets the node's own signed reports move the address
    inside it (audited, routes follow); outside it, or signed by anyone else, nothing."""
    response = clients["platform_admin"].post(
        NODES,
        {"name": "k8s-1", "pool": "gpu", "address": "10.244.3.7",
         "address_network": "10.244.3.0/24"},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.json()
    secret = response.json()["credential"]
    moved = signed(report("k8s-1", sign=False, address="10.244.3.9"), secret)
    assert tasks.node_report(moved) == "applied"
    node = Node.objects.get(name="k8s-1")
    assert node.address == "10.244.3.9"
    move = AuditEvent.objects.get(action="node.address_move", target_id=str(node.pk))
    assert move.changes["address"] == ["10.244.3.7", "10.244.3.9"]
    outside = signed(report("k8s-1", sign=False, address="10.9.9.9"), secret)
    assert tasks.node_report(outside) == "refused: address_changed"
    forged = signed(report("k8s-1", sign=False, address="10.244.3.66"), "not-the-secret")
    assert tasks.node_report(forged) == "refused: bad_signature"
    assert Node.objects.get(name="k8s-1").address == "10.244.3.9"
    bad = clients["platform_admin"].patch(
        NODES + "k8s-1/", {"address_network": "10.244.3.0/33"}, format="json"
    )
    assert bad.status_code == 400 and "address_network" in bad.json()["error"]["fields"]


def test_a_replayed_report_is_stale(pool):
    _, secret = register("gpu-1")
    first = signed(report(sign=False, sent_at=time.time()), secret)
    assert tasks.node_report(first) == "applied"
    assert tasks.node_report(dict(first)) == "stale"


def test_node_created_without_credential_is_not_heard_until_rotated(pool):
    node = create_node(actor=SYSTEM, name="gpu-1", pool=pool, address="10.0.0.1")
    assert tasks.node_report(signed(report(sign=False), "guess")) == "refused: no_credential"
    secret = node_auth.rotate_node_credential(actor=SYSTEM, node=node)
    assert tasks.node_report(signed(report(sign=False), secret)) == "applied"


def test_single_machine_bootstrap_registers_the_local_node(settings, tmp_path, world):
    from controlplane import bootstrap

    settings.DATA_DIR = tmp_path
    said: list[str] = []
    bootstrap._local_node(said.append)
    path = bootstrap.local_node_secret_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = path.read_text().strip()
    node = Node.objects.get(name="local")
    assert node.pool.name == bootstrap.LOCAL_POOL and node.address == "127.0.0.1"
    body = report("local", sign=False, pool="local", address=bootstrap.LOCAL_NODE_ADDRESS)
    assert tasks.node_report(signed(body, secret)) == "applied"
    bootstrap._local_node(said.append)  # a second start keeps the credential
    assert path.read_text().strip() == secret and len(said) == 1
    path.unlink()  # lost: a new one is issued, the old one no longer works
    bootstrap._local_node(said.append)
    assert path.read_text().strip() != secret
    body = report("local", sign=False, pool="local", address=bootstrap.LOCAL_NODE_ADDRESS)
    assert tasks.node_report(signed(body, secret)) == "refused: bad_signature"


def test_node_redis_user_command_prints_a_url_that_reaches_only_the_nodes_queue(capsys):
    import uuid

    import redis

    name = f"cmd-{uuid.uuid4().hex[:8]}"
    call_command("node_redis_user", name)
    url = capsys.readouterr().out.strip().removeprefix("AGENT_BROKER_URL=")
    agent = redis.Redis.from_url(url)
    try:
        assert agent.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.get("sap:snapshot")
        assert agent.llen(protocol.agent_queue(name)) == 0
    finally:
        agent.close()
        call_command("node_redis_user", name, "--delete")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url).ping()
