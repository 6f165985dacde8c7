"""Fleet REST API: isolation (the shared suite's rules), validation and audit."""

from __future__ import annotations

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.services import create_model, create_version
from controlplane.fleet.models import Deployment, Pool, Replica
from controlplane.fleet.services import create_deployment, create_node, create_pool
from django.apps import apps

from tests.conftest import SYSTEM
from tests.controlplane import test_isolation as iso
from tests.controlplane.test_isolation import CALLERS, expected
from tests.controlplane.test_isolation import database_state as base_state
from tests.fleet.conftest import report

pytestmark = pytest.mark.django_db


def database_state() -> str:
    import hashlib
    import json

    digest = hashlib.sha256(base_state().encode())
    for model in apps.get_app_config("fleet").get_models():
        rows = list(model.objects.order_by("pk").values())
        digest.update(json.dumps(rows, default=str, sort_keys=True).encode())
    return digest.hexdigest()


def check(client, method, url, payload, want):
    before = database_state()
    response = (
        getattr(client, method)(url, payload, format="json")
        if payload is not None
        else getattr(client, method)(url)
    )
    assert response.status_code == want, (method, url, response.status_code, response.content[:500])
    if want >= 400:
        body = response.json()
        assert set(body) == {"error"} and body["error"]["message"], body
        assert database_state() == before, f"refused {method} {url} changed the database"
    return response


@pytest.fixture
def fleet(world, sized_model):
    pool = create_pool(actor=SYSTEM, name="gpu")
    node = create_node(actor=SYSTEM, name="gpu-1", pool=pool, address="10.0.0.1")
    deployment = create_deployment(
        actor=SYSTEM, organization=world.org_a, name="chat", model="tiny-chat", pool=pool
    )
    replica = Replica.objects.create(
        deployment=deployment, spec_hash=deployment.spec_hash, api_key_encrypted="secret-token"
    )
    return pool, node, deployment, replica


ORG = "/api/v1/organizations/org-a/"


@pytest.mark.parametrize("caller", CALLERS)
def test_deployment_read(caller, clients, fleet):
    _pool, _node, deployment, replica = fleet
    want = expected(caller, iso.Role.VIEWER, 200)
    response = check(clients[caller], "get", f"{ORG}deployments/", None, want)
    if want == 200:
        [item] = response.json()["results"]
        assert item["model"] == "tiny-chat" and item["version"] == "v1"
        assert item["status"]["desired"] == 1 and item["status"]["pending"] == 1
    check(clients[caller], "get", f"{ORG}deployments/{deployment.pk}/", None, want)
    response = check(clients[caller], "get", f"{ORG}replicas/", None, want)
    check(clients[caller], "get", f"{ORG}replicas/{replica.pk}/", None, want)
    if want == 200:
        text = response.content.decode()
        assert "secret-token" not in text and "api_key" not in text


@pytest.mark.parametrize("caller", CALLERS)
def test_deployment_create(caller, clients, fleet):
    want = expected(caller, iso.Role.ADMIN, 201)
    payload = {"name": "chat2", "model": "tiny-chat", "pool": "gpu", "replicas": 2}
    response = check(clients[caller], "post", f"{ORG}deployments/", payload, want)
    if want == 201:
        assert response.json()["replicas"] == 2
        assert AuditEvent.objects.filter(
            action="deployment.create", request_id=response["X-Request-ID"]
        ).exists()


@pytest.mark.parametrize("caller", CALLERS)
def test_deployment_update_and_delete(caller, clients, fleet):
    deployment = fleet[2]
    want = expected(caller, iso.Role.ADMIN, 200)
    url = f"{ORG}deployments/{deployment.pk}/"
    response = check(clients[caller], "patch", url, {"replicas": 3}, want)
    if want == 200:
        assert response.json()["replicas"] == 3 and response.json()["generation"] == 2
    check(clients[caller], "delete", url, None, expected(caller, iso.Role.ADMIN, 204))


def test_foreign_deployment_is_404_through_own_org(clients, fleet):
    deployment, replica = fleet[2], fleet[3]
    for path in (f"deployments/{deployment.pk}/", f"replicas/{replica.pk}/"):
        url = f"/api/v1/organizations/org-b/{path}"
        check(clients["admin_b"], "get", url, None, 404)
    url = f"/api/v1/organizations/org-b/deployments/{deployment.pk}/"
    check(clients["admin_b"], "patch", url, {"replicas": 0}, 404)
    check(clients["admin_b"], "delete", url, None, 404)


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": "x", "model": "nope", "pool": "gpu"}, "model"),
        ({"name": "x", "model": "tiny-chat", "pool": "nope"}, "pool"),
        ({"name": "x", "model": "tiny-chat", "version": "v9", "pool": "gpu"}, "version"),
        ({"name": "chat", "model": "tiny-chat", "pool": "gpu"}, "name"),
        ({"name": "x", "model": "tiny-chat", "pool": "gpu", "replicas": 65}, "replicas"),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "max_model_len": 4096},
            "max_model_len",
        ),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "tensor_parallel_size": 0},
            "tensor_parallel_size",
        ),
        (
            {
                "name": "x",
                "model": "tiny-chat",
                "pool": "gpu",
                "engine_args": {"trust_remote_code": True},
            },
            "engine_args",
        ),
        (
            {
                "name": "x",
                "model": "tiny-chat",
                "pool": "gpu",
                "engine_args": {"tensor_parallel_size": 2},
            },
            "engine_args",
        ),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "selector": {"bad key!": "x"}},
            "selector",
        ),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "gpu_memory_fraction": 1.5},
            "gpu_memory_fraction",
        ),
        ({"name": "x", "model": "tiny-chat", "pool": "gpu", "dtype": "float64"}, "dtype"),
        ({"name": "x", "model": "tiny-chat", "pool": "gpu", "min_replicas": 0}, "max_replicas"),
        ({"name": "x", "model": "tiny-chat", "pool": "gpu", "max_replicas": 2}, "min_replicas"),
        (
            {
                "name": "x",
                "model": "tiny-chat",
                "pool": "gpu",
                "min_replicas": 3,
                "max_replicas": 2,
            },
            "max_replicas",
        ),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "scale_target": "cpu"},
            "scale_target",
        ),
        (
            {
                "name": "x",
                "model": "tiny-chat",
                "pool": "gpu",
                "min_replicas": 0,
                "max_replicas": 2,
                "scale_target": "kv_cache",
                "scale_target_value": 2,
            },
            "scale_target_value",
        ),
        (
            {"name": "x", "model": "tiny-chat", "pool": "gpu", "scale_down_delay_seconds": 0},
            "scale_down_delay_seconds",
        ),
        ({"name": "x", "model": "tiny-chat", "pool": "gpu", "api_key": "k"}, "api_key"),
    ],
)
def test_deployment_validation_is_a_field_error(clients, fleet, payload, field):
    response = check(clients["owner_a"], "post", f"{ORG}deployments/", payload, 400)
    assert field in response.json()["error"]["fields"], response.json()


def test_model_not_granted_to_the_org_is_refused(clients, fleet):
    other = create_model(
        actor=SYSTEM,
        alias="secret-model",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )
    create_version(
        actor=SYSTEM,
        model=other,
        version="v1",
        source_type="local",
        local_path="/m",
        context_length=1024,
        parameter_count=10**9,
    )
    payload = {"name": "x", "model": "secret-model", "pool": "gpu"}
    response = check(clients["owner_a"], "post", f"{ORG}deployments/", payload, 400)
    assert "may use" in response.json()["error"]["message"]


def test_unknown_memory_needs_a_fraction(clients, world):
    create_pool(actor=SYSTEM, name="gpu")
    payload = {"name": "x", "model": "tiny-chat", "pool": "gpu"}
    response = check(clients["owner_a"], "post", f"{ORG}deployments/", payload, 400)
    assert "gpu_memory_fraction" in response.json()["error"]["fields"]
    payload["gpu_memory_fraction"] = 0.5
    check(clients["owner_a"], "post", f"{ORG}deployments/", payload, 201)


def test_pool_gpu_quota_per_organization(clients, fleet):
    pool = fleet[0]
    pool.org_gpu_quota = 3
    pool.save()
    url = f"{ORG}deployments/"
    payload = {
        "name": "big",
        "model": "tiny-chat",
        "pool": "gpu",
        "replicas": 1,
        "tensor_parallel_size": 4,
    }
    response = check(clients["owner_a"], "post", url, payload, 400)
    assert "allows 3 GPUs" in response.json()["error"]["message"]
    payload.update(tensor_parallel_size=2)
    check(clients["owner_a"], "post", url, payload, 201)  # 1 (chat) + 2 = 3
    check(clients["owner_a"], "patch", f"{url}{fleet[2].pk}/", {"replicas": 2}, 400)


def test_spec_change_is_a_new_generation_and_hash(clients, fleet):
    deployment = fleet[2]
    url = f"{ORG}deployments/{deployment.pk}/"
    response = check(clients["owner_a"], "patch", url, {"enable_lora": True}, 200).json()
    assert response["spec_hash"] != deployment.spec_hash and response["generation"] == 2
    same = check(clients["owner_a"], "patch", url, {"enable_lora": True}, 200).json()
    assert same["generation"] == 2  # no change, no new generation
    check(clients["owner_a"], "patch", url, {"name": "renamed"}, 400)


# --------------------------------------------------------------------------- platform admin
ADMIN_ONLY = [
    (
        "fleet/pools/",
        {"name": "pool2", "strategy": "spread", "labels": {"zone": "a"}},
        "gpu/",
        {"org_gpu_quota": 8},
    ),
    (
        "fleet/nodes/",
        {"name": "gpu-9", "pool": "gpu", "address": "10.0.0.9"},
        "gpu-1/",
        {"labels": {"rack": "r1"}},
    ),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("path, create, detail, patch", ADMIN_ONLY, ids=["pools", "nodes"])
def test_fleet_infrastructure_is_platform_admin_only(
    caller, clients, fleet, path, create, detail, patch
):
    base = f"/api/v1/{path}"
    ok = caller == "platform_admin"
    denied = 401 if caller == "anonymous" else 403
    check(clients[caller], "get", base, None, 200 if ok else denied)
    check(clients[caller], "get", base + detail, None, 200 if ok else denied)
    check(clients[caller], "post", base, create, 201 if ok else denied)
    check(clients[caller], "patch", base + detail, patch, 200 if ok else denied)


def test_cordon_and_uncordon(clients, fleet):
    url = "/api/v1/fleet/nodes/gpu-1/"
    check(clients["owner_a"], "post", url + "cordon/", None, 403)
    body = check(clients["platform_admin"], "post", url + "cordon/", None, 200).json()
    assert body["cordoned"] is True
    assert AuditEvent.objects.filter(action="node.cordon").exists()
    assert (
        check(clients["platform_admin"], "post", url + "uncordon/", None, 200).json()["cordoned"]
        is False
    )


def test_pool_and_node_deletion_rules(clients, fleet):
    node = fleet[1]
    check(clients["platform_admin"], "delete", "/api/v1/fleet/pools/gpu/", None, 400)
    # a lost node (never reported) may go; its replicas would be re-placed
    check(clients["platform_admin"], "delete", f"/api/v1/fleet/nodes/{node.name}/", None, 204)
    Deployment.objects.all().delete()
    check(clients["platform_admin"], "delete", "/api/v1/fleet/pools/gpu/", None, 204)
    assert not Pool.objects.exists()


def test_node_with_running_replicas_cannot_be_deleted(clients, fleet):
    from controlplane.fleet import tasks

    tasks.node_report(report("gpu-1"))
    replica = fleet[3]
    replica.node = fleet[1]
    replica.state = "ready"
    replica.save()
    check(clients["platform_admin"], "delete", "/api/v1/fleet/nodes/gpu-1/", None, 400)


def test_bad_pool_input(clients, world):
    for payload in (
        {"name": "Bad Name"},
        {"name": "p", "strategy": "random"},
        {"name": "p", "labels": {"a": 1}},
        {"name": "p", "org_gpu_quota": -1},
        {"name": "p", "extra": 1},
    ):
        check(clients["platform_admin"], "post", "/api/v1/fleet/pools/", payload, 400)
