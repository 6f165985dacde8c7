"""The reusable isolation suite: every organization resource, every kind of caller.

For each resource and caller it asserts the status (another organization's objects
are 404, a missing role is 403, no credentials is 401) and, for every refused
request, that nothing changed: no row, no field, no audit event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.services import create_model
from controlplane.quotas.services import create_limit_policy
from controlplane.tenancy.models import Membership
from controlplane.tenancy.roles import RANK, Role
from controlplane.tenancy.services import add_team_member, create_api_key, create_team
from django.apps import apps

from tests.conftest import SYSTEM

CALLER_ROLE = {
    "owner_a": Role.OWNER,
    "member_a": Role.MEMBER,
    "viewer_a": Role.VIEWER,
    "admin_b": None,  # a member elsewhere: org A does not exist for them
    "anonymous": "anonymous",
    "platform_admin": "platform",
}
CALLERS = list(CALLER_ROLE)


def database_state() -> str:
    """A fingerprint of every row the platform owns."""
    digest = hashlib.sha256()
    for label in ("tenancy", "catalog", "quotas", "audit", "fleet", "auth"):
        for model in apps.get_app_config(label).get_models():
            rows = list(model.objects.order_by("pk").values())
            digest.update(json.dumps(rows, default=str, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass
class Resource:
    name: str
    path: str  # under /api/v1/organizations/org-a/
    view_role: Role
    make_object: Callable | None = None  # world -> (object id for the detail URL)
    create: dict | Callable | None = None
    create_role: Role | None = None
    patch: dict | None = None
    patch_role: Role | None = None
    delete_role: Role | None = None
    singleton: bool = False
    extra: dict = field(default_factory=dict)


def _team(w):
    return create_team(actor=SYSTEM, organization=w.org_a, slug="research", name="Research").pk


def _membership(w):
    return Membership.objects.get(user=w.bob, organization=w.org_a).pk


def _key(w):
    key, _ = create_api_key(
        actor=SYSTEM, organization=w.org_a, name="ci", scopes=["inference"], user=w.alice
    )
    return key.pk


def _access(w):
    return w.org_a.model_access.get().pk


def _limits(w):
    team = create_team(actor=SYSTEM, organization=w.org_a, slug="limited", name="Limited")
    return create_limit_policy(actor=SYSTEM, organization=w.org_a, team=team, rpm=5).pk


def _team_member(w):
    team = create_team(actor=SYSTEM, organization=w.org_a, slug="crew", name="Crew")
    return add_team_member(actor=SYSTEM, team=team, user=w.bob).pk


def _audit(w):
    return AuditEvent.objects.filter(organization_id=w.org_a.pk).first().seq


def _new_team_member_payload(w):
    team = create_team(actor=SYSTEM, organization=w.org_a, slug="joiners", name="Joiners")
    return {"team": str(team.pk), "username": "bob"}


def _new_model_payload(w):
    create_model(
        actor=SYSTEM,
        alias="embed-small",
        task="embedding",
        license_id="mit",
        commercial_use=True,
        openness="open-source",
    )
    return {"model": "embed-small"}


RESOURCES = [
    Resource(
        "organization",
        "",
        Role.VIEWER,
        make_object=None,
        singleton=True,
        patch={"name": "Renamed"},
        patch_role=Role.ADMIN,
        delete_role=Role.OWNER,
    ),
    Resource(
        "teams",
        "teams/",
        Role.VIEWER,
        _team,
        {"slug": "new-team", "name": "New"},
        Role.ADMIN,
        {"name": "Renamed"},
        Role.ADMIN,
        Role.ADMIN,
    ),
    Resource(
        "members",
        "members/",
        Role.VIEWER,
        _membership,
        {"username": "newcomer", "role": "member"},
        Role.ADMIN,
        {"role": "viewer"},
        Role.ADMIN,
        Role.ADMIN,
    ),
    Resource(
        "keys",
        "keys/",
        Role.VIEWER,
        _key,
        {"name": "mine", "scopes": ["inference"]},
        Role.MEMBER,
        {"name": "renamed"},
        Role.ADMIN,
        None,
    ),
    Resource(
        "model-access",
        "model-access/",
        Role.VIEWER,
        _access,
        _new_model_payload,
        Role.ADMIN,
        None,
        None,
        Role.ADMIN,
    ),
    Resource(
        "policy",
        "policy/",
        Role.VIEWER,
        None,
        None,
        None,
        {"require_commercial_use": True},
        Role.ADMIN,
        None,
        singleton=True,
    ),
    Resource(
        "limits",
        "limits/",
        Role.VIEWER,
        _limits,
        {"rpm": 100, "tpm": 10000},
        Role.ADMIN,
        {"rpm": 7},
        Role.ADMIN,
        Role.ADMIN,
    ),
    Resource(
        "team-members",
        "team-members/",
        Role.VIEWER,
        _team_member,
        _new_team_member_payload,
        Role.ADMIN,
        None,
        None,
        Role.ADMIN,
    ),
    Resource("usage", "usage/", Role.MEMBER),
    Resource("audit-events", "audit-events/", Role.ADMIN, _audit),
]


def expected(caller: str, needed: Role | None, ok: int) -> int:
    role = CALLER_ROLE[caller]
    if role == "anonymous":
        return 401
    if role == "platform":
        return ok
    if role is None:
        return 404
    return ok if RANK[role] >= RANK[needed] else 403


def _url(resource: Resource, object_id=None) -> str:
    base = f"/api/v1/organizations/org-a/{resource.path}"
    if resource.singleton or object_id is None:
        return base
    return f"{base}{object_id}/"


def _check(client, method, url, payload, want):
    before = database_state()
    response = (
        getattr(client, method)(url, payload, format="json")
        if payload is not None
        else getattr(client, method)(url)
    )
    assert response.status_code == want, (
        method,
        url,
        response.status_code,
        getattr(response, "data", None),
    )
    if want >= 400:
        body = response.json()
        assert set(body) == {"error"} and body["error"]["message"], body
        assert database_state() == before, f"refused {method} {url} changed the database"
    return response


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.name)
def test_read(resource, caller, world, clients):
    object_id = resource.make_object(world) if resource.make_object else None
    want = expected(caller, resource.view_role, 200)
    if not resource.singleton:
        response = _check(clients[caller], "get", _url(resource), None, want)
        if want == 200:
            assert "results" in response.json()
    if object_id is not None or resource.singleton:
        _check(clients[caller], "get", _url(resource, object_id), None, want)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if r.create is not None], ids=lambda r: r.name
)
def test_create(resource, caller, world, clients):
    payload = resource.create(world) if callable(resource.create) else resource.create
    want = expected(caller, resource.create_role, 201)
    response = _check(clients[caller], "post", _url(resource), payload, want)
    if want == 201:
        assert AuditEvent.objects.filter(request_id=response["X-Request-ID"]).exists()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if r.patch is not None], ids=lambda r: r.name
)
def test_update(resource, caller, world, clients):
    object_id = resource.make_object(world) if resource.make_object else None
    want = expected(caller, resource.patch_role, 200)
    _check(clients[caller], "patch", _url(resource, object_id), resource.patch, want)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if r.delete_role is not None], ids=lambda r: r.name
)
def test_delete(resource, caller, world, clients):
    object_id = resource.make_object(world) if resource.make_object else None
    want = expected(caller, resource.delete_role, 204)
    _check(clients[caller], "delete", _url(resource, object_id), None, want)


@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if not r.singleton and r.make_object], ids=lambda r: r.name
)
def test_foreign_object_id_is_404_even_inside_own_org_url(resource, world, clients):
    """oscar (admin of B) asks for an object of A through org B's URL: not found."""
    object_id = resource.make_object(world)
    url = f"/api/v1/organizations/org-b/{resource.path}{object_id}/"
    _check(clients["admin_b"], "get", url, None, 404)
    if resource.delete_role is not None:
        _check(clients["admin_b"], "delete", url, None, 404)
    if resource.patch is not None:
        _check(clients["admin_b"], "patch", url, resource.patch, 404)


def test_organization_list_is_scoped(world, clients):
    def slugs(caller):
        response = clients[caller].get("/api/v1/organizations/")
        return [o["slug"] for o in response.json()["results"]]

    assert slugs("owner_a") == ["org-a"]
    assert slugs("admin_b") == ["org-b"]
    assert slugs("platform_admin") == ["org-a", "org-b"]


def test_only_platform_admin_creates_organizations(world, clients):
    for caller in ("owner_a", "admin_b"):
        _check(clients[caller], "post", "/api/v1/organizations/", {"slug": "x", "name": "X"}, 403)
    _check(
        clients["platform_admin"], "post", "/api/v1/organizations/", {"slug": "x", "name": "X"}, 201
    )


def test_foreign_team_id_in_body_is_a_field_error(world, clients):
    team_b = create_team(actor=SYSTEM, organization=world.org_b, slug="b-team", name="B")
    before = database_state()
    response = clients["owner_a"].post(
        "/api/v1/organizations/org-a/keys/",
        {"name": "x", "scopes": ["inference"], "team": str(team_b.pk)},
        format="json",
    )
    assert response.status_code == 400
    assert "team" in response.json()["error"]["fields"]
    assert database_state() == before
