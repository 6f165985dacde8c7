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


def database_state(ignore: tuple[str, ...] = ()) -> str:
    """A fingerprint of every row the platform owns (but the ``ignore``d columns)."""
    digest = hashlib.sha256()
    for label in ("tenancy", "catalog", "quotas", "audit", "fleet", "auth"):
        for model in apps.get_app_config(label).get_models():
            rows = list(model.objects.order_by("pk").values())
            for row in rows:
                for name in ignore:
                    row.pop(name, None)
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
    create_limit_policy(actor=SYSTEM, organization=w.org_a, team=team, rpm=5)
    # The object under test is a team's limits for one model.
    return create_limit_policy(
        actor=SYSTEM, organization=w.org_a, team=team, model="tiny-chat", rpm=5
    ).pk


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


# --------------------------------------------------------------------------- two orgs
def _populate(world, org, tag: str) -> None:
    """One row of every organization resource in ``org``."""
    from controlplane.catalog.services import grant_model_access
    from controlplane.fleet.models import Pool, Replica
    from controlplane.fleet.services import create_deployment, create_pool
    from controlplane.quotas.models import UsageRecord
    from django.utils import timezone

    team = create_team(actor=SYSTEM, organization=org, slug=f"team-{tag}", name=tag)
    add_team_member(actor=SYSTEM, team=team, user=world.dora)
    create_api_key(actor=SYSTEM, organization=org, name=f"key-{tag}", scopes=["inference"])
    create_limit_policy(actor=SYSTEM, organization=org, team=team, rpm=5)
    create_limit_policy(actor=SYSTEM, organization=org, model="tiny-chat", daily_tokens=1000)
    if not org.model_access.exists():
        grant_model_access(actor=SYSTEM, organization=org, model=world.model)
    UsageRecord.objects.create(
        request_id=f"req-{tag}",
        organization_id=org.pk,
        model="tiny-chat",
        endpoint="chat",
        status=200,
        occurred_at=timezone.now(),
    )
    pool = Pool.objects.filter(name="gpu").first() or create_pool(actor=SYSTEM, name="gpu")
    deployment = create_deployment(
        actor=SYSTEM, organization=org, name=f"chat-{tag}", model="tiny-chat", pool=pool
    )
    Replica.objects.create(deployment=deployment, spec_hash=deployment.spec_hash)


def _expected_ids(path: str, org) -> set[str]:
    """The ids the database holds for ``org``, read without the API's code."""
    from controlplane.catalog.models import OrganizationModelAccess
    from controlplane.fleet.models import Deployment, Replica
    from controlplane.quotas.models import LimitPolicy, UsageRecord
    from controlplane.tenancy.models import ApiKey, Team, TeamMembership

    queries = {
        "teams/": Team.objects.filter(organization=org).values_list("pk", flat=True),
        "team-members/": TeamMembership.objects.filter(team__organization=org).values_list(
            "pk", flat=True
        ),
        "members/": Membership.objects.filter(organization=org).values_list("pk", flat=True),
        "keys/": ApiKey.objects.filter(organization=org).values_list("pk", flat=True),
        "model-access/": OrganizationModelAccess.objects.filter(organization=org).values_list(
            "pk", flat=True
        ),
        "limits/": LimitPolicy.objects.filter(organization=org).values_list("pk", flat=True),
        "usage/": UsageRecord.objects.filter(organization_id=org.pk).values_list(
            "request_id", flat=True
        ),
        "audit-events/": AuditEvent.objects.filter(organization_id=org.pk).values_list(
            "seq", flat=True
        ),
        "deployments/": Deployment.objects.filter(organization=org).values_list("pk", flat=True),
        "replicas/": Replica.objects.filter(deployment__organization=org).values_list(
            "pk", flat=True
        ),
    }
    return {str(value) for value in queries[path]}


ID_FIELD = {"usage/": "request_id", "audit-events/": "seq"}
LISTS = [
    "teams/",
    "team-members/",
    "members/",
    "keys/",
    "model-access/",
    "limits/",
    "usage/",
    "audit-events/",
    "deployments/",
    "replicas/",
]


@pytest.fixture
def two_orgs(world, dual, monkeypatch):
    from controlplane.catalog.models import ModelVersion
    from controlplane.fleet import services as fleet_services

    monkeypatch.setattr(fleet_services, "request_reconcile", lambda: None)
    version = ModelVersion.objects.get(model=world.model)
    version.parameter_count = 1_000_000_000
    version.dtype = "bfloat16"
    version.save()
    _populate(world, world.org_a, "a")
    _populate(world, world.org_b, "b")
    from tests.conftest import client_for

    return client_for(dual)


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("slug", ["org-a", "org-b"])
def test_list_holds_exactly_the_organizations_rows(world, two_orgs, path, slug):
    """dora belongs to both organizations: each list shows the one in the URL, all of
    its rows and none of the other's."""
    org = world.org_a if slug == "org-a" else world.org_b
    role = "admin" if slug == "org-a" else "member"
    response = two_orgs.get(f"/api/v1/organizations/{slug}/{path}?page_size=500")
    if path == "audit-events/" and role == "member":
        assert response.status_code == 403
        return
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next"] is None
    got = {str(row[ID_FIELD.get(path, "id")]) for row in body["results"]}
    expected = _expected_ids(path, org)
    other = _expected_ids(path, world.org_b if org == world.org_a else world.org_a)
    assert expected and other, f"the fixture left {path} empty in an organization"
    assert got == expected


def test_organization_list_of_a_member_of_two(world, two_orgs):
    response = two_orgs.get("/api/v1/organizations/")
    got = {(o["slug"], o["role"]) for o in response.json()["results"]}
    assert got == {("org-a", "admin"), ("org-b", "member")}
    assert {o for o, _ in got} == set(
        Membership.objects.filter(user=world.dora).values_list("organization__slug", flat=True)
    )
