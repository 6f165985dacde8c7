"""Fleet fixtures: a pool, fake agent reports (signed like a real agent's, the node
registered on first use), and the agents' queues captured."""

from __future__ import annotations

import itertools
import time

import pytest
from controlplane.catalog.models import ModelVersion
from controlplane.fleet import node_auth, reconciler
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Node, Pool
from controlplane.fleet.services import create_pool

from tests.conftest import SYSTEM
from workers import protocol

GIB = 1024
_clock = itertools.count(1)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Nothing leaves for the broker: sends to agents are recorded, reconcile wake-ups
    are counted (the tests run the reconciler themselves)."""
    sent: list[dict] = []
    wakeups: list[int] = []
    monkeypatch.setattr(reconciler, "send_to_agent", sent.append)
    monkeypatch.setattr(fleet_services, "request_reconcile", lambda: wakeups.append(1))
    return {"sent": sent, "wakeups": wakeups}


@pytest.fixture
def sent(no_broker):
    return no_broker["sent"]


@pytest.fixture
def pool(db):
    return create_pool(actor=SYSTEM, name="gpu", strategy="binpack")


@pytest.fixture
def sized_model(world):
    """The world's tiny-chat version, with a parameter count (so memory is estimated)."""
    version = ModelVersion.objects.get(model=world.model)
    version.parameter_count = 1_000_000_000
    version.dtype = "bfloat16"
    version.save()
    return version


def node_secret(name: str, *, pool: str = "gpu", address: str = "10.0.0.1") -> str:
    """The credential of node `name`: registered (with `address`) if it does not exist,
    issued anew if it has none (created without one, or issued in an earlier test)."""
    node = Node.objects.filter(name=name).first()
    if node is None:
        _, secret = node_auth.register_node(
            actor=SYSTEM, name=name, pool=Pool.objects.get(name=pool), address=address
        )
        return secret
    secret = node_auth.node_secret(node)
    return secret or node_auth.rotate_node_credential(actor=SYSTEM, node=node)


def report(
    node="gpu-1",
    *,
    pool="gpu",
    gpus=(80 * GIB,),
    replicas=(),
    generation_applied=0,
    sent_at=None,
    labels=None,
    address="10.0.0.1",
    sign=True,
):
    """A node report as the node's agent sends it: signed with the node's secret (the
    node is registered first when it does not exist; `sign=False`: neither)."""
    body = {
        "protocol": 1,
        "node": node,
        "pool": pool,
        "address": address,
        "labels": labels or {},
        "inventory": {
            "kind": "gpu",
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-{node}-{i}",
                    "name": "H100",
                    "memory_total_mib": size,
                    "memory_free_mib": size,
                }
                for i, size in enumerate(gpus)
            ],
            "cpu_count": 16,
            "memory_total_mib": 128 * GIB,
        },
        "generation_applied": generation_applied,
        "replicas": list(replicas),
        "sent_at": sent_at if sent_at is not None else time.time() + next(_clock) * 1e-3,
        "agent_version": "test",
    }
    if not sign:
        return body
    return protocol.sign_report(body, node_secret(node, pool=pool, address=address))


def replica_report(replica, state="ready", **extra):
    item = {
        "id": str(replica.pk),
        "spec_hash": replica.spec_hash,
        "state": state,
        "port": replica.port,
        "pid": 1234,
        "restarts": 0,
        "last_error": "",
        "load": {"num_requests_running": 0.0, "num_requests_waiting": 0.0},
    }
    item.update(extra)
    return item
