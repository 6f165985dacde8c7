"""No key stronger than its maker: each way a key (or its maker) could climb above
their standing, tried through the REST API, refused, and nothing changed."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import redis
from controlplane.audit.models import AuditEvent
from controlplane.quotas.models import LimitPolicy
from controlplane.quotas.services import create_limit_policy
from controlplane.snapshot import build_snapshot
from controlplane.tenancy import services
from controlplane.tenancy.models import ApiKey, Membership, TeamMembership
from controlplane.tenancy.services import (
    add_member,
    add_team_member,
    create_api_key,
    create_team,
)
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import SYSTEM, client_for
from tests.controlplane.test_isolation import database_state as fingerprint

KEYS = "/api/v1/organizations/org-a/keys/"
MEMBERS = "/api/v1/organizations/org-a/members/"


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def database_state() -> str:
    """What a refused request must leave unchanged: everything but use telemetry."""
    return fingerprint(ignore=("last_used_at", "last_login"))


def refused(response, *statuses: int) -> None:
    assert response.status_code in (statuses or (400, 403)), (
        response.status_code,
        response.content,
    )
    assert response.json()["error"]["message"]


@pytest.fixture
def adam(world, make_user):
    """An admin of org A."""
    user = make_user("adam")
    add_member(actor=SYSTEM, organization=world.org_a, username="adam", role="admin")
    return user


def membership(user, org):
    return Membership.objects.get(user=user, organization=org)


# --------------------------------------------------------------------------- 1
def test_admin_cannot_make_a_key_for_the_owner_and_climb_through_it(world, adam):
    admin = client_for(adam)
    before = database_state()
    response = admin.post(
        KEYS, {"name": "owner's", "scopes": ["manage"], "user": "alice"}, format="json"
    )
    refused(response, 403)
    assert database_state() == before
    assert membership(adam, world.org_a).role == "admin"


def test_admin_cannot_make_a_key_for_another_admin(world, adam, make_user):
    make_user("ada")
    add_member(actor=SYSTEM, organization=world.org_a, username="ada", role="admin")
    admin = client_for(adam)
    before = database_state()
    response = admin.post(KEYS, {"name": "x", "scopes": ["manage"], "user": "ada"}, format="json")
    refused(response, 403)
    assert database_state() == before


def test_admin_makes_keys_for_self_lower_roles_and_service(world, adam):
    admin = client_for(adam)
    for user in ("adam", "bob", "victor", None):
        payload = {"name": f"for-{user}", "scopes": ["manage"]}
        if user:
            payload["user"] = user
        response = admin.post(KEYS, payload, format="json")
        assert response.status_code == 201, (user, response.content)
        assert response.json()["user"] == user


def test_owner_may_make_a_key_for_anyone(world, adam, clients):
    response = clients["owner_a"].post(
        KEYS, {"name": "for-adam", "scopes": ["manage"], "user": "adam"}, format="json"
    )
    assert response.status_code == 201


# --------------------------------------------------------------------------- 2
@pytest.fixture
def narrow_key(world):
    """A manage key of alice (the owner), limited to one model and one hour."""
    expires = timezone.now() + dt.timedelta(hours=1)
    key, secret = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="narrow",
        scopes=["manage"],
        user=world.alice,
        allowed_models=["tiny-chat"],
        expires_at=expires,
    )
    return key, secret


@pytest.mark.parametrize(
    "payload",
    [  # each inside the narrow key but for one thing
        {"scopes": ["inference", "manage"], "allowed_models": ["tiny-chat"], "expires_in": 0.5},
        {"scopes": ["manage"], "expires_in": 0.5},  # no model list
        {"scopes": ["manage"], "allowed_models": ["tiny-chat"]},  # never expires
        {"scopes": ["manage"], "allowed_models": ["tiny-chat"], "expires_in": 2},  # later
        {"scopes": ["inference", "manage"]},  # everything wider at once
    ],
)
def test_a_narrow_key_cannot_mint_a_wider_one(world, narrow_key, payload):
    _, secret = narrow_key
    payload = {"name": "wide", **payload}
    hours = payload.pop("expires_in", None)
    if hours:
        payload["expires_at"] = (timezone.now() + dt.timedelta(hours=hours)).isoformat()
    before = database_state()
    refused(bearer(secret).post(KEYS, payload, format="json"), 400, 403)
    assert database_state() == before


def test_a_narrow_key_mints_keys_inside_itself_with_its_limits(world, narrow_key):
    key, secret = narrow_key
    create_limit_policy(actor=SYSTEM, organization=world.org_a, api_key=key, rpm=3)
    response = bearer(secret).post(
        KEYS,
        {
            "name": "inside",
            "scopes": ["manage"],
            "allowed_models": ["tiny-chat"],
            "expires_at": (timezone.now() + dt.timedelta(minutes=30)).isoformat(),
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    child = ApiKey.objects.get(pk=response.json()["id"])
    assert LimitPolicy.objects.get(api_key=child).rpm == 3


def test_a_team_key_mints_only_keys_of_its_team(world):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="ml", name="ML")
    add_team_member(actor=SYSTEM, team=team, user=world.alice)
    _, secret = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="team",
        scopes=["manage"],
        user=world.alice,
        team=team,
    )
    before = database_state()
    refused(bearer(secret).post(KEYS, {"name": "x", "scopes": ["manage"]}, format="json"), 400)
    assert database_state() == before


# --------------------------------------------------------------------------- 3
@pytest.fixture
def bobs_restricted_key(world):
    """A key alice (the owner) made for bob, limited to one model and one hour."""
    key, _ = create_api_key(
        actor=Actor_for(world.alice),
        organization=world.org_a,
        name="for bob",
        scopes=["inference"],
        user=world.bob,
        allowed_models=["tiny-chat"],
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )
    return key


def Actor_for(user):
    from controlplane.tenancy.actors import Actor

    return Actor.for_user(user)


@pytest.mark.parametrize(
    "patch",
    [
        {"allowed_models": []},
        {"expires_at": None},
        {"expires_at": "2999-01-01T00:00:00Z"},
    ],
)
def test_member_cannot_clear_restrictions_an_admin_set(world, clients, bobs_restricted_key, patch):
    before = database_state()
    response = clients["member_a"].patch(f"{KEYS}{bobs_restricted_key.pk}/", patch, format="json")
    refused(response, 403)
    assert database_state() == before


def test_member_may_narrow_an_admins_key_then_still_not_widen(world, clients, bobs_restricted_key):
    url = f"{KEYS}{bobs_restricted_key.pk}/"
    sooner = timezone.now() + dt.timedelta(minutes=10)
    response = clients["member_a"].patch(url, {"expires_at": sooner.isoformat()}, format="json")
    assert response.status_code == 200, response.content
    refused(clients["member_a"].patch(url, {"expires_at": None}, format="json"), 403)


def test_member_widens_only_what_they_set_themselves(world, clients):
    bob = clients["member_a"]
    created = bob.post(
        KEYS,
        {"name": "mine", "scopes": ["inference"], "allowed_models": ["tiny-chat"]},
        format="json",
    )
    url = f"{KEYS}{created.json()['id']}/"
    assert bob.patch(url, {"allowed_models": []}, format="json").status_code == 200
    # An owner restricts it; now bob may not lift that.
    narrowed = clients["owner_a"].patch(url, {"allowed_models": ["tiny-chat"]}, format="json")
    assert narrowed.status_code == 200
    before = database_state()
    refused(bob.patch(url, {"allowed_models": []}, format="json"), 403)
    assert database_state() == before
    # The owner may widen it again.
    assert clients["owner_a"].patch(url, {"allowed_models": []}, format="json").status_code == 200


def test_admin_cannot_widen_the_owners_key(world, adam):
    key, _ = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="alice's",
        scopes=["inference"],
        user=world.alice,
        allowed_models=["tiny-chat"],
    )
    admin = client_for(adam)
    before = database_state()
    refused(admin.patch(f"{KEYS}{key.pk}/", {"allowed_models": []}, format="json"), 403)
    assert database_state() == before


# --------------------------------------------------------------------------- 4
def test_removed_admin_cannot_come_back_through_a_service_key(world, adam, clients):
    made = client_for(adam).post(KEYS, {"name": "robot", "scopes": ["manage"]}, format="json")
    assert made.status_code == 201
    secret = made.json()["key"]
    gone = clients["owner_a"].delete(f"{MEMBERS}{membership(adam, world.org_a).pk}/")
    assert gone.status_code == 204
    robot = ApiKey.objects.get(pk=made.json()["id"])
    assert robot.revoked_at is not None
    assert AuditEvent.objects.filter(action="apikey.revoke", target_id=str(robot.pk)).exists()
    before = database_state()
    response = bearer(secret).post(MEMBERS, {"username": "adam", "role": "admin"}, format="json")
    refused(response, 401)
    assert database_state() == before


@pytest.fixture
def service_secret(world):
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="robot", scopes=["inference", "manage"]
    )
    return secret


def test_service_key_cannot_change_members_or_roles(world, service_secret):
    robot = bearer(service_secret)
    bob = membership(world.bob, world.org_a)
    attempts = [
        ("post", MEMBERS, {"username": "mallory", "role": "admin"}),
        ("patch", f"{MEMBERS}{bob.pk}/", {"role": "admin"}),
        ("delete", f"{MEMBERS}{bob.pk}/", None),
    ]
    for method, url, payload in attempts:
        before = database_state()
        response = getattr(robot, method)(url, payload, format="json")
        refused(response, 403)
        assert database_state() == before, (method, url)


def test_service_key_cannot_create_manage_keys(world, service_secret):
    robot = bearer(service_secret)
    before = database_state()
    refused(robot.post(KEYS, {"name": "x", "scopes": ["manage"]}, format="json"), 403)
    assert database_state() == before
    assert (
        robot.post(KEYS, {"name": "y", "scopes": ["inference"]}, format="json").status_code == 201
    )


def test_service_key_acts_no_higher_than_its_maker_now(world, adam, clients):
    made = client_for(adam).post(KEYS, {"name": "robot", "scopes": ["manage"]}, format="json")
    robot = bearer(made.json()["key"])
    teams = "/api/v1/organizations/org-a/teams/"
    assert robot.post(teams, {"slug": "one", "name": "One"}, format="json").status_code == 201
    demoted = clients["owner_a"].patch(
        f"{MEMBERS}{membership(adam, world.org_a).pk}/", {"role": "member"}, format="json"
    )
    assert demoted.status_code == 200
    refused(robot.post(teams, {"slug": "two", "name": "Two"}, format="json"), 403)


def test_a_key_follows_its_users_current_role(world, make_user):
    olga = client_for(make_user("olga"))
    add_member(actor=SYSTEM, organization=world.org_a, username="olga", role="owner")
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="a", scopes=["manage"], user=world.alice
    )
    alice = bearer(secret)
    mine = membership(world.alice, world.org_a)
    demote = olga.patch(f"{MEMBERS}{mine.pk}/", {"role": "member"}, format="json")
    assert demote.status_code == 200
    bob = membership(world.bob, world.org_a)
    refused(alice.patch(f"{MEMBERS}{bob.pk}/", {"role": "admin"}, format="json"), 403)


# --------------------------------------------------------------------------- 5
@pytest.fixture
def published(world):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    connection.run_on_commit.clear()  # the world's publish never commits in a test
    yield client
    client.flushdb()


@pytest.fixture
def gateway(published):
    from gateway.app import create_app
    from gateway.settings import Settings
    from tests.gateway.fakes import ServerThread, wait_for

    app = create_app(
        Settings(
            api_key_pepper=settings.API_KEY_PEPPER,
            redis_url=settings.REDIS_URL,
            snapshot_poll_interval=0.2,
            access_log=False,
        )
    )
    server = ServerThread(app).start()

    def wait_version(version: int) -> None:
        assert wait_for(lambda: app.snapshots.current.version >= version, 10)

    server.wait_version = wait_version
    yield server
    server.stop()


def test_deactivated_users_keys_stop_at_the_gateway(
    world, gateway, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = create_api_key(
            actor=SYSTEM, organization=world.org_a, name="b", scopes=["inference"], user=world.bob
        )
    gateway.wait_version(build_snapshot()["version"])
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code == 200
    connection.run_on_commit.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.deactivate_user(actor=SYSTEM, user=world.bob)
    gateway.wait_version(build_snapshot()["version"])
    assert httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code == 401
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action="apikey.revoke", target_id=str(key.pk)).exists()
    assert AuditEvent.objects.filter(action="user.deactivate", target_id=str(world.bob.pk)).exists()


def test_deactivate_command_revokes_keys(world):
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["inference"], user=world.bob
    )
    call_command("deactivate_user", "bob")
    key.refresh_from_db()
    world.bob.refresh_from_db()
    assert key.revoked_at is not None and not world.bob.is_active
    assert key.prefix not in build_snapshot()["keys"]


def test_snapshot_leaves_out_keys_of_inactive_users_and_leavers(world, adam):
    """Defence in depth: even a write that bypassed the services leaves no usable key."""
    bobs, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["inference"], user=world.bob
    )
    victors, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="v", scopes=["inference"], user=world.victor
    )
    robot, _ = create_api_key(
        actor=Actor_for(adam), organization=world.org_a, name="r", scopes=["inference"]
    )
    system_robot, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="s", scopes=["inference"]
    )
    keys = build_snapshot()["keys"]
    assert {bobs.prefix, victors.prefix, robot.prefix, system_robot.prefix} <= set(keys)
    type(world.bob).objects.filter(pk=world.bob.pk).update(is_active=False)
    Membership.objects.filter(user=world.victor).delete()
    Membership.objects.filter(user=adam).delete()
    keys = build_snapshot()["keys"]
    assert bobs.prefix not in keys and victors.prefix not in keys and robot.prefix not in keys
    assert system_robot.prefix in keys


def test_a_key_of_an_inactive_user_has_no_role(world):
    from controlplane.tenancy.actors import Actor

    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["manage"], user=world.bob
    )
    assert Actor.for_key(key).roles == {world.org_a.pk: "member"}
    type(world.bob).objects.filter(pk=world.bob.pk).update(is_active=False)  # no service
    key = ApiKey.objects.select_related("user").get(pk=key.pk)
    assert Actor.for_key(key).roles == {}


def test_rest_api_refuses_a_key_whose_user_left(world):
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="b", scopes=["manage"], user=world.bob
    )
    Membership.objects.filter(user=world.bob).delete()  # bypassing the services
    refused(bearer(secret).get("/api/v1/organizations/"), 401)


# --------------------------------------------------------------------------- 6
def test_leaving_a_team_revokes_keys_charged_to_it(world, clients):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="ml", name="ML")
    seat = add_team_member(actor=SYSTEM, team=team, user=world.bob)
    charged, _ = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="ml",
        scopes=["inference"],
        user=world.bob,
        team=team,
    )
    other, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="own", scopes=["inference"], user=world.bob
    )
    response = clients["owner_a"].delete(f"/api/v1/organizations/org-a/team-members/{seat.pk}/")
    assert response.status_code == 204
    charged.refresh_from_db()
    other.refresh_from_db()
    assert charged.revoked_at is not None and other.revoked_at is None
    event = AuditEvent.objects.get(action="apikey.revoke", target_id=str(charged.pk))
    assert event.changes["reason"] == [None, "removed from team"]
    assert not TeamMembership.objects.filter(pk=seat.pk).exists()


def test_a_team_key_belongs_to_a_member_of_the_team(world, clients):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="ml", name="ML")
    before = database_state()
    response = clients["owner_a"].post(
        KEYS,
        {"name": "x", "scopes": ["inference"], "user": "bob", "team": str(team.pk)},
        format="json",
    )
    refused(response, 400)
    assert database_state() == before


def test_deleting_a_team_revokes_its_keys(world, clients):
    team = create_team(actor=SYSTEM, organization=world.org_a, slug="ml", name="ML")
    key, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="t", scopes=["inference"], team=team
    )
    response = clients["owner_a"].delete(f"/api/v1/organizations/org-a/teams/{team.pk}/")
    assert response.status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None and key.team_id is None


def test_admin_cannot_lift_the_limits_of_the_owners_key(world, adam):
    key, _ = create_api_key(
        actor=SYSTEM,
        organization=world.org_a,
        name="alice's",
        scopes=["inference"],
        user=world.alice,
    )
    policy = create_limit_policy(actor=SYSTEM, organization=world.org_a, api_key=key, rpm=3)
    admin = client_for(adam)
    url = f"/api/v1/organizations/org-a/limits/{policy.pk}/"
    before = database_state()
    refused(admin.delete(url), 403)
    refused(admin.patch(url, {"rpm": 1000}, format="json"), 403)
    assert database_state() == before
    bobs, _ = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="bob's", scopes=["inference"], user=world.bob
    )
    mine = create_limit_policy(actor=SYSTEM, organization=world.org_a, api_key=bobs, rpm=3)
    assert admin.delete(f"/api/v1/organizations/org-a/limits/{mine.pk}/").status_code == 204


def test_key_list_filter_with_an_offset_postgresql_refuses_is_read_in_utc(world, clients):
    response = clients["owner_a"].get(f"{KEYS}?revoked_at=6405-01-31T09:30:37%2B23:22")
    assert response.status_code == 200 and response.json()["count"] == 0
    assert clients["owner_a"].get(KEYS).status_code == 200  # the transaction is intact
