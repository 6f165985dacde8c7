"""Capacity belongs to its owner, end to end on real components: the control plane
publishes the routes of org A's deployment (a READY replica that is a real vLLM CPU
server), a real gateway process serves the official ``openai`` client, and

* org B, allowed the model but owning no deployment of it, gets 503 naming the model,
  while A's vLLM server receives nothing (its own request counter says so);
* A is served by its replica;
* a platform deployment shared with B serves B;
* the ledger names the caller and the owner of the capacity for every request."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from controlplane.catalog.secrets import encrypt_secret
from controlplane.catalog.services import create_model, create_version, grant_model_access
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Node, NodeState, Replica, ReplicaState
from controlplane.fleet.services import create_deployment, create_node, create_pool
from controlplane.quotas.ledger import LedgerConsumer
from controlplane.quotas.models import UsageRecord
from controlplane.snapshot import publish_snapshot
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.services import create_api_key, create_organization

from tests.integration.test_inference_through_platform import gateway, r  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SYSTEM = Actor.system("capacity test")
MESSAGES = [{"role": "user", "content": "hello"}]
_SUCCESS = re.compile(r"^vllm:request_success_total(\{[^}]*\})?\s+([0-9.e+]+)$", re.M)


def served_requests(server) -> float:
    """Requests the vLLM server finished, from its own Prometheus counter."""
    text = httpx.get(f"{server.root_url}/metrics", timeout=10).text
    values = [float(match.group(2)) for match in _SUCCESS.finditer(text)]
    assert values, "vLLM exposes no vllm:request_success_total"
    return sum(values)


def wait_served(server, want: float) -> float:
    deadline = time.monotonic() + 20
    while (count := served_requests(server)) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def ready_replica(deployment, node, server) -> Replica:
    """What the reconciler records once the node's agent reports the replica ready."""
    return Replica.objects.create(
        deployment=deployment,
        node=node,
        port=urlsplit(server.root_url).port,
        endpoint=server.root_url,
        state=ReplicaState.READY,
        spec_hash=deployment.spec_hash,
        api_key_encrypted=encrypt_secret(server.api_key),
    )


@pytest.fixture
def two_orgs(vllm_chat, r, monkeypatch):  # noqa: F811
    monkeypatch.setattr(fleet_services, "request_reconcile", lambda: None)
    org_a = create_organization(actor=SYSTEM, slug="owner-a", name="Owner A")
    org_b = create_organization(actor=SYSTEM, slug="tenant-b", name="Tenant B")
    chat = create_model(
        actor=SYSTEM,
        alias="tiny-chat",
        task="chat",
        license_id="apache-2.0",
        commercial_use=True,
        openness="open-weights",
    )
    create_version(
        actor=SYSTEM,
        model=chat,
        version="v1",
        source_type="local",
        local_path="/models/tiny-chat",
        context_length=2048,
    )
    for org in (org_a, org_b):
        grant_model_access(actor=SYSTEM, organization=org, model=chat)
    pool = create_pool(actor=SYSTEM, name="cpu")
    node = create_node(actor=SYSTEM, name="cpu-1", pool=pool, address="127.0.0.1")
    Node.objects.filter(pk=node.pk).update(state=NodeState.READY)
    own = create_deployment(
        actor=SYSTEM,
        organization=org_a,
        name="chat",
        model="tiny-chat",
        pool=pool,
        gpu_memory_fraction=0.5,
    )
    replica_a = ready_replica(own, node, vllm_chat)
    keys = {}
    for org in (org_a, org_b):
        _key, secret = create_api_key(
            actor=SYSTEM, organization=org, name="app", scopes=["inference"]
        )
        keys[org.slug] = secret
    publish_snapshot(r)
    return org_a, org_b, pool, node, replica_a, keys


def test_capacity_serves_only_its_owner_and_those_shared_with(
    two_orgs,
    vllm_chat,
    gateway,  # noqa: F811
    r,  # noqa: F811
):
    org_a, org_b, pool, _node, replica_a, keys = two_orgs
    clients = {
        slug: openai.OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0)
        for slug, secret in keys.items()
    }
    before = served_requests(vllm_chat)

    with pytest.raises(openai.InternalServerError) as refused:
        clients["tenant-b"].chat.completions.create(
            model="tiny-chat", messages=MESSAGES, max_tokens=4
        )
    assert refused.value.status_code == 503
    message = refused.value.response.json()["error"]["message"]
    assert "'tiny-chat'" in message and "organization has no deployment" in message
    # A's replica is served by the same process, so a request to it must count: the
    # counter does move, and B's refusal did not move it.
    answer = clients["owner-a"].chat.completions.create(
        model="tiny-chat", messages=MESSAGES, max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert answer.usage.completion_tokens == 4
    assert wait_served(vllm_chat, before + 1) == before + 1

    # The platform shares a deployment with B: B is served, by that replica.
    shared = create_deployment(
        actor=SYSTEM,
        organization=None,
        name="shared-chat",
        model="tiny-chat",
        pool=pool,
        gpu_memory_fraction=0.5,
        shared_with=[org_b],
    )
    # Another node in front of the same server (one vLLM process serves both replicas
    # here; the ledger's replica ids tell them apart).
    other_node = create_node(actor=SYSTEM, name="cpu-2", pool=pool, address="127.0.0.1")
    Node.objects.filter(pk=other_node.pk).update(state=NodeState.READY)
    replica_p = ready_replica(shared, other_node, vllm_chat)
    publish_snapshot(r)
    deadline = time.monotonic() + 10
    while True:  # the gateway applies the new snapshot on its notice
        try:
            answer = clients["tenant-b"].chat.completions.create(
                model="tiny-chat", messages=MESSAGES, max_tokens=4, extra_body={"ignore_eos": True}
            )
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline, "the shared deployment never served B"
            time.sleep(0.1)
    assert answer.usage.completion_tokens == 4

    consumer = LedgerConsumer(r, name="capacity", block_ms=200)
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(organization_id=org_b.pk, status=200).exists():
        assert time.monotonic() < deadline, "the ledger did not record B's answer"
        consumer.run_once()  # waits (briefly) for the gateway's events
    records = list(UsageRecord.objects.order_by("occurred_at"))
    # B's first request, A's, then B's retries until the snapshot arrived, then success.
    first, second, *rest = records
    assert (first.organization_id, first.status, first.replica, first.owner_id) == (
        org_b.pk,
        503,
        "",
        None,
    )
    assert (second.organization_id, second.status, second.replica, second.owner_id) == (
        org_a.pk,
        200,
        str(replica_a.pk),
        org_a.pk,
    )
    last = rest[-1]
    assert (last.organization_id, last.status, last.replica, last.owner_id) == (
        org_b.pk,
        200,
        str(replica_p.pk),
        None,
    )
    assert all(rec.status == 503 and rec.organization_id == org_b.pk for rec in rest[:-1])
    assert not UsageRecord.objects.filter(organization_id=org_b.pk, replica=str(replica_a.pk))
