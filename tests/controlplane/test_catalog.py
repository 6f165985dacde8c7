"""Catalog: versions pinned and validated, trust_remote_code guarded, licences and
openness enforced by organization policy."""

from __future__ import annotations

import pytest
from controlplane.catalog import services
from controlplane.catalog.models import ModelVersion
from controlplane.tenancy.actors import Actor
from django.core.exceptions import PermissionDenied, ValidationError

from tests.conftest import SYSTEM

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def llama(db):
    return services.create_model(
        actor=SYSTEM,
        alias="llama-3.1-8b",
        task="chat",
        publisher="Meta",
        license_id="llama3.1",
        license_name="Llama 3.1 Community License",
        commercial_use=True,
        openness="open-weights",
    )


def version(model, **fields):
    base = {
        "version": "v1",
        "source_type": "huggingface",
        "hf_repo": "meta/llama",
        "revision": COMMIT,
    }
    return services.create_version(actor=SYSTEM, model=model, **(base | fields))


def test_first_version_becomes_default_and_one_default_only(llama):
    v1 = version(llama)
    assert v1.is_default
    v2 = version(llama, version="v2", is_default=True)
    v1.refresh_from_db()
    assert v2.is_default and not v1.is_default
    assert ModelVersion.objects.filter(model=llama, is_default=True).count() == 1


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"revision": "main"}, "revision"),
        ({"hf_repo": "not a repo"}, "hf_repo"),
        ({"source_type": "local", "local_path": "models/x"}, "local_path"),
        ({"source_type": "local", "local_path": "/models/../etc"}, "local_path"),
        ({"file_manifest": {"../../etc/passwd": "a" * 64}}, "file_manifest"),
        ({"file_manifest": {"model.safetensors": "not-a-digest"}}, "file_manifest"),
        ({"engine_args": {"trust_remote_code": True}}, "engine_args"),
        ({"engine_args": {"max_model_len": "big"}}, "engine_args"),
        ({"source_type": "external"}, "source_type"),
    ],
)
def test_bad_versions_are_refused_with_the_field(llama, fields, field):
    with pytest.raises(ValidationError) as info:
        version(llama, **fields)
    assert field in info.value.message_dict
    assert not ModelVersion.objects.exists()


def test_trust_remote_code_needs_a_platform_admin(world, llama):
    org_admin = Actor.for_user(world.alice)
    with pytest.raises(PermissionDenied):
        services.create_version(
            actor=org_admin, model=llama, version="x", source_type="local", local_path="/m"
        )
    admin = Actor.for_user(world.root)
    v = services.create_version(
        actor=admin,
        model=llama,
        version="remote",
        source_type="local",
        local_path="/m",
        trust_remote_code=True,
    )
    assert v.trust_remote_code and v.trust_remote_code_approved_by == world.root
    # the system actor (a script) cannot approve it either: it names no person
    with pytest.raises(PermissionDenied):
        version(llama, version="v9", trust_remote_code=True)


def test_alias_cannot_change(llama):
    with pytest.raises(ValidationError):
        services.update_model(actor=SYSTEM, model=llama, alias="other")


def test_policy_refuses_non_commercial_and_open_access(world, clients):
    services.create_model(
        actor=SYSTEM,
        alias="research-only",
        task="chat",
        license_id="cc-by-nc-4.0",
        commercial_use=False,
        openness="open-weights",
    )
    external = services.create_model(
        actor=SYSTEM,
        alias="outside-gpt",
        task="chat",
        license_id="proprietary",
        commercial_use=True,
        openness="open-access",
    )
    owner = clients["owner_a"]
    # open-access is refused by default: nothing leaves the house
    r = clients["platform_admin"].post(
        "/api/v1/organizations/org-a/model-access/", {"model": "outside-gpt"}, format="json"
    )
    assert r.status_code == 400 and "open-access" in r.json()["error"]["message"]
    # the non-commercial model is fine until the policy requires commercial use
    assert (
        clients["platform_admin"]
        .post(
            "/api/v1/organizations/org-a/model-access/", {"model": "research-only"}, format="json"
        )
        .status_code
        == 201
    )
    r = owner.patch(
        "/api/v1/organizations/org-a/policy/", {"require_commercial_use": True}, format="json"
    )
    assert r.status_code == 200
    access = {
        a["model"]: a["usable"]
        for a in owner.get("/api/v1/organizations/org-a/model-access/").json()["results"]
    }
    assert access == {"research-only": False, "tiny-chat": True}
    assert services.usable_model_aliases(world.org_a) == {"tiny-chat"}
    # opening the policy to open-access lets the outside model in
    owner.patch(
        "/api/v1/organizations/org-a/policy/",
        {"allowed_openness": ["open-weights", "open-access"]},
        format="json",
    )
    assert services.grant_model_access(actor=SYSTEM, organization=world.org_a, model=external)
    assert "outside-gpt" in services.usable_model_aliases(world.org_a)


def test_member_cannot_change_policy(world, clients):
    r = clients["member_a"].patch(
        "/api/v1/organizations/org-a/policy/", {"require_commercial_use": True}, format="json"
    )
    assert r.status_code == 403


def test_models_visible_only_when_granted(world, clients):
    services.create_model(
        actor=SYSTEM,
        alias="secret-model",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-source",
    )
    seen = [m["alias"] for m in clients["owner_a"].get("/api/v1/models/").json()["results"]]
    assert seen == ["tiny-chat"]
    assert clients["owner_a"].get("/api/v1/models/secret-model/").status_code == 404
    assert clients["admin_b"].get("/api/v1/models/").json()["results"] == []
    all_models = clients["platform_admin"].get("/api/v1/models/").json()["results"]
    assert {m["alias"] for m in all_models} == {"tiny-chat", "secret-model"}
    # org members read but never write the catalog
    assert (
        clients["owner_a"]
        .patch("/api/v1/models/tiny-chat/", {"publisher": "x"}, format="json")
        .status_code
        == 403
    )
    assert clients["owner_a"].get("/api/v1/models/tiny-chat/versions/").json()["count"] == 1


def test_catalog_api_round_trip(world, clients):
    admin = clients["platform_admin"]
    r = admin.post(
        "/api/v1/models/",
        {
            "alias": "qwen2.5-7b",
            "task": "chat",
            "publisher": "Alibaba",
            "license_id": "apache-2.0",
            "commercial_use": True,
            "openness": "open-weights",
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    r = admin.post(
        "/api/v1/models/qwen2.5-7b/versions/",
        {
            "version": "2024-09",
            "source_type": "huggingface",
            "hf_repo": "Qwen/Qwen2.5-7B-Instruct",
            "revision": COMMIT,
            "parameter_count": 7_600_000_000,
            "dtype": "bfloat16",
            "context_length": 32768,
            "engine_args": {"max_model_len": 8192, "enable_prefix_caching": True},
            "file_manifest": {"model-00001-of-00004.safetensors": "b" * 64},
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    model = admin.get("/api/v1/models/qwen2.5-7b/").json()
    assert model["default_version"] == "2024-09"


def test_upstreams_are_admin_only_and_ssrf_checked(world, clients):
    ext = services.create_model(
        actor=SYSTEM,
        alias="provider-x",
        task="chat",
        license_id="proprietary",
        commercial_use=True,
        openness="open-access",
    )
    admin = clients["platform_admin"]
    r = admin.post(
        "/api/v1/models/provider-x/upstreams/",
        {
            "name": "p",
            "base_url": "http://127.0.0.1:9999",
            "served_model_name": "x",
            "api_key": "k",
        },
        format="json",
    )
    assert r.status_code == 400 and "base_url" in r.json()["error"]["fields"]
    r = admin.post(
        "/api/v1/models/tiny-chat/upstreams/",
        {
            "name": "local",
            "base_url": "http://127.0.0.1:8001",
            "served_model_name": "tiny",
            "api_key": "k1",
        },
        format="json",
    )
    assert r.status_code == 201 and r.json()["has_api_key"] and "api_key" not in r.json()
    r = admin.post(
        "/api/v1/models/tiny-chat/upstreams/",
        {"name": "meta", "base_url": "http://169.254.169.254/", "served_model_name": "t"},
        format="json",
    )
    assert r.status_code == 400
    assert clients["owner_a"].get("/api/v1/models/tiny-chat/upstreams/").status_code == 403
    assert clients["owner_a"].get("/api/v1/models/provider-x/upstreams/").status_code == 404
    assert ext.upstreams.count() == 0
